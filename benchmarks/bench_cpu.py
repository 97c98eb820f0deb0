"""CPU inference: cupyden's DnCNN-12/32 forward on 1x1x1024x1024 against PyTorch CPU.

Usage:
  bench_cpu.py [--size PX] [--repeat N]

Options:
  --size PX     Image side in pixels [default: 1024]
  --repeat N    Timed repetitions; the median is printed [default: 5]

Both run the same weights in float32 on this machine's cores in the same process; the
outputs are compared (rel error printed). PyTorch is a peer here only, never a dependency:
without torch installed the peer is skipped. Prints the median times and the throughput
ratio cupyden/PyTorch (> 1 means cupyden is faster).
"""

import os
import platform
import statistics
import time

import numpy
from docopt import docopt

from cupyden.models import DnCNN


def median_time(f, repeat):
    f()                                     # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    args = docopt(__doc__)
    size, repeat = int(args["--size"]), int(args["--repeat"])
    model = DnCNN(12, 32, seed=0).to(numpy, numpy.float32).eval()
    x = numpy.random.default_rng(0).standard_normal((1, 1, size, size)).astype(numpy.float32)
    t_ours = median_time(lambda: model.forward(x), repeat)
    print("machine: %s, %d cores, numpy %s" % (platform.processor() or platform.machine(),
                                              os.cpu_count(), numpy.__version__))
    print("cupyden DnCNN-12/32 forward 1x1x%dx%d: %.3f s" % (size, size, t_ours))
    try:
        import torch
    except ImportError:
        print("torch not installed: peer skipped")
        return
    torch.set_num_threads(os.cpu_count())
    layers = []
    for name, layer in model.named_layers():
        w = layer.params["w"]
        conv = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        conv.weight.data = torch.from_numpy(w.copy())
        conv.bias.data = torch.from_numpy(layer.params["b"].copy())
        layers += [conv, torch.nn.ReLU()] if layer.slope is not None else [conv]
    net = torch.nn.Sequential(*layers).eval()
    xt = torch.from_numpy(x)

    def peer():
        with torch.no_grad():
            return xt - net(xt)

    t_peer = median_time(peer, repeat)
    y, yt = model.forward(x), peer().numpy()
    err = numpy.linalg.norm(y - yt) / numpy.linalg.norm(yt)
    print("PyTorch %s CPU (%d threads): %.3f s   (outputs agree to rel %.1e)"
          % (torch.__version__, torch.get_num_threads(), t_peer, err))
    print("throughput ratio cupyden/PyTorch: %.2fx" % (t_peer / t_ours))


if __name__ == "__main__":
    main()
