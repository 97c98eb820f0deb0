"""cupyden's CPU path against PyTorch CPU, in one process, with the same weights and threads.

Usage:
  bench_cpu.py [--threads N] [--repeat N] [--size PX] [--batch N] [--patch PX]
               [--only TEXT] [--markdown FILE] [--cpu-time] [--torch-channels-last]

Options:
  --threads N      Threads for both (cupyden's pool and BLAS, torch.set_num_threads);
                   auto = the CPUs this process may use [default: auto]
  --repeat N       Timed runs of each row, alternating cupyden and PyTorch; the medians
                   are compared [default: 5]
  --size PX        Side of the micrograph of the forward rows, in pixels [default: 1024]
  --batch N        Patches per training step [default: 16]
  --patch PX       Side of the training patches, in pixels [default: 128]
  --only TEXT      Run only the rows whose name contains TEXT.
  --markdown FILE  Also write the table as Markdown to FILE.
  --cpu-time       Time by this thread's CPU time instead of the wall clock, with one
                   thread (both then run in this thread): a time slice lost to another
                   process is charged to neither, so the ratio holds on a busy machine.
                   Per-core efficiency only; the claims are the wall-clock rows.
  --torch-channels-last  Give PyTorch its inputs in channels_last memory (its default is
                   NCHW, the layout of the rows' claims).

Rows: the forward pass (inference, no caches / no_grad) of DnCNN-12/32, the U-Net (base 32)
and Topaz-Denoise's UDenoiseNet (``unet``: nf 48, 11x11 first and 5x5 last convolutions) on
one 1 x 1 x SIZE x SIZE image, and one training step of each (forward, MSE loss, backward,
Adam at lr 1e-3) on BATCH x 1 x PATCH x PATCH. PyTorch (a peer here, never a dependency)
runs the same networks written with torch.nn.functional on the same weights, in its default
NCHW layout; each row checks that the outputs (forward) or the losses and updated weights
(training) agree. One untimed run of each first. The ratio is PyTorch's median time over
cupyden's (> 1: cupyden has the higher throughput).
"""

import os
import statistics
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.models import build_model
from cupyden.optim import Adam, Parameters
from cupyden.training import train_step

NETS = {"dncnn-12/32": {"arch": "dncnn", "depth": 12, "width": 32, "seed": 0},
        "unet": {"arch": "unet", "base": 32, "seed": 0},
        "topaz-unet": {"arch": "topaz-unet", "base_width": 11, "top_width": 5, "seed": 0}}


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (or the platform's word for it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- PyTorch

def torch_forward(torch, arch, p, x):
    """The network of ``arch`` in torch.nn.functional, with cupyden's parameter names.

    p : dict name -> torch tensor (cupyden's ``model.state()`` names); x : (N, 1, H, W)
    with H, W multiples of 8 (U-Net) or 32 (Topaz), where both skip their padding.
    """
    F = torch.nn.functional

    def conv(h, name, act=None):
        w = p[name + ".w"]
        h = F.conv2d(h, w, p[name + ".b"], padding=w.shape[-1] // 2)
        if act == "relu":
            return F.relu(h)
        return F.leaky_relu(h, 0.1) if act == "leaky" else h

    if arch == "dncnn":
        h, depth = x, len([k for k in p if k.endswith(".w")])
        for i in range(1, depth + 1):
            h = conv(h, "conv%d" % i, "relu" if i < depth else None)
        return x - h
    if arch == "unet":
        def block(h, name):
            return conv(conv(h, name + ".conv1", "relu"), name + ".conv2", "relu")

        def up_cat(h, skip):
            return torch.cat([F.interpolate(h, size=skip.shape[2:], mode="nearest"), skip], 1)
        e1 = block(x, "enc1")
        e2 = block(F.max_pool2d(e1, 2), "enc2")
        e3 = block(F.max_pool2d(e2, 2), "enc3")
        b = block(F.max_pool2d(e3, 2), "bott")
        d3 = block(up_cat(b, e3), "dec3")
        d2 = block(up_cat(d3, e2), "dec2")
        d1 = block(up_cat(d2, e1), "dec1")
        return conv(d1, "out")
    depth = len([k for k in p if k.startswith("enc") and k.endswith(".w")]) - 1
    skips, h = [x], x
    for i in range(1, depth + 1):
        h = F.max_pool2d(conv(h, "enc%d.0" % i, "leaky"), 2)
        skips.append(h)
    h = conv(h, "enc%d.0" % (depth + 1), "leaky")
    for i in range(depth, 0, -1):
        skip = skips[i - 1]
        h = torch.cat([F.interpolate(h, size=skip.shape[2:], mode="nearest"), skip], 1)
        if i > 1:
            h = conv(conv(h, "dec%d.0" % i, "leaky"), "dec%d.2" % i, "leaky")
        else:
            h = conv(conv(conv(h, "dec1.0", "leaky"), "dec1.2", "leaky"), "dec1.4")
    return h


def rel(a, b):
    a, b = numpy.asarray(a, numpy.float64), numpy.asarray(b, numpy.float64)
    return float(numpy.linalg.norm(a - b) / max(numpy.linalg.norm(b), 1e-300))


#: The clock of the timings: time.perf_counter, or time.thread_time with --cpu-time.
CLOCK = [time.perf_counter]


def alternate(fa, fb, repeat):
    """Median seconds of fa and fb, run alternately (one warm-up each) so that both see
    the same machine."""
    fa()
    fb()
    clock = CLOCK[0]
    ta, tb = [], []
    for _ in range(repeat):
        for f, t in ((fa, ta), (fb, tb)):
            t0 = clock()
            f()
            t.append(clock() - t0)
    return statistics.median(ta), statistics.median(tb)


#: torch.channels_last with --torch-channels-last, else torch.contiguous_format.
LAYOUT = [None]


def as_torch(torch, a):
    """A copy of the array as a torch tensor; 4-D ones in the memory layout of LAYOUT."""
    t = torch.from_numpy(a.copy())
    return t.contiguous(memory_format=LAYOUT[0]) if t.ndim == 4 else t


def forward_row(torch, net, size, repeat):
    model = build_model(NETS[net]).to(numpy, numpy.float32).eval()
    x = numpy.random.default_rng(0).standard_normal((1, 1, size, size)).astype(numpy.float32)
    p = {k: as_torch(torch, v) for k, v in model.state().items()}
    xt = torch.from_numpy(x).contiguous(memory_format=LAYOUT[0])

    def peer():
        with torch.no_grad():
            return torch_forward(torch, NETS[net]["arch"], p, xt)

    t_ours, t_peer = alternate(lambda: model.forward(x), peer, repeat)
    check = "outputs agree to rel %.1e" % rel(model.forward(x), peer().numpy())
    return "forward %s 1x1x%dx%d" % (net, size, size), t_ours, t_peer, check


def train_row(torch, net, batch, patch, repeat):
    model = build_model(NETS[net]).to(numpy, numpy.float32).train()
    state0 = model.state()
    params = Parameters(model)
    opt = Adam(params, lr=1e-3)
    rng = numpy.random.default_rng(0)
    shape = (batch, 1, patch, patch)
    x = rng.standard_normal(shape).astype(numpy.float32)
    t = rng.standard_normal(shape).astype(numpy.float32)
    p = {k: as_torch(torch, v).requires_grad_() for k, v in state0.items()}
    topt = torch.optim.Adam(list(p.values()), lr=1e-3)
    xt = torch.from_numpy(x).contiguous(memory_format=LAYOUT[0])
    tt = torch.from_numpy(t).contiguous(memory_format=LAYOUT[0])

    def peer():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(torch_forward(torch, NETS[net]["arch"], p, xt), tt)
        loss.backward()
        topt.step()
        return loss.detach()

    # first step of each from the same weights: equal losses, equal updated weights
    l_ours, l_peer = float(train_step(model, params, opt, "mse", x, t)), float(peer())
    name = sorted(state0)[0]
    w_rel = rel(model.state()[name], p[name].detach().numpy())
    t_ours, t_peer = alternate(lambda: train_step(model, params, opt, "mse", x, t), peer,
                               repeat)
    check = "losses agree to rel %.1e, %s after one step to %.1e" % (
        abs(l_ours - l_peer) / abs(l_peer), name, w_rel)
    return "train %s %dx1x%dx%d" % (net, batch, patch, patch), t_ours, t_peer, check


def main():
    args = docopt(__doc__)
    threads = backend.set_cpu_threads(None if args["--threads"] == "auto"
                                      else int(args["--threads"]))
    if args["--cpu-time"]:
        if threads != 1:
            raise SystemExit("--cpu-time needs --threads 1")
        CLOCK[0] = time.thread_time
    repeat, size = int(args["--repeat"]), int(args["--size"])
    batch, patch = int(args["--batch"]), int(args["--patch"])
    from threadpoolctl import threadpool_info
    print("CPU: %s; %d CPUs usable by this process (os.cpu_count %d); numpy %s"
          % (cpu_model(), backend.cpu_threads(), os.cpu_count(), numpy.__version__))
    for lib in threadpool_info():
        print("BLAS/OpenMP: %s %s (%s), %d threads, %s" % (
            lib["internal_api"], lib.get("version"), lib.get("architecture", ""),
            lib["num_threads"], os.path.basename(lib["filepath"])))
    print("cupyden: %d threads; clock: %s" % (threads, CLOCK[0].__name__))
    import torch
    torch.set_num_threads(threads)
    LAYOUT[0] = torch.channels_last if args["--torch-channels-last"] else torch.contiguous_format
    print("PyTorch %s: %d threads, %s, inputs %s" % (
        torch.__version__, torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(),
        "channels_last" if args["--torch-channels-last"] else "NCHW"))
    rows = []
    for net in NETS:
        for kind in ("forward", "train"):
            if args["--only"] and args["--only"] not in "%s %s" % (kind, net):
                continue
            row = (forward_row(torch, net, size, repeat) if kind == "forward"
                   else train_row(torch, net, batch, patch, repeat))
            rows.append(row)
            print("%-34s cupyden %8.3f s  PyTorch %8.3f s  ratio %.2fx  (%s)"
                  % (row[0], row[1], row[2], row[2] / row[1], row[3]), flush=True)
    if args["--markdown"]:
        with open(args["--markdown"], "w") as f:
            f.write("| row | cupyden | PyTorch CPU | throughput ratio |\n|---|---|---|---|\n")
            for name, a, b, check in rows:
                f.write("| %s | %.3f s | %.3f s | %.2fx |\n" % (name, a, b, b / a))


if __name__ == "__main__":
    main()
