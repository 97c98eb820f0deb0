"""Where the CPU time of a forward pass or a training step goes, op by op.

Usage:
  profile_cpu.py [--net NET] [--mode MODE] [--size PX] [--batch N] [--patch PX]
                 [--conv PATH] [--threads N]

Options:
  --net NET      dncnn, unet or topaz-unet (Topaz's ``unet``: 11x11 and 5x5) [default: dncnn]
  --mode MODE    forward (1 x 1 x SIZE^2, no caches) or train (one step on
                 BATCH x 1 x PATCH^2: forward, MSE, backward, Adam) [default: forward]
  --size PX      Image side of the forward pass, in pixels [default: 1024]
  --batch N      Patches per training step [default: 16]
  --patch PX     Patch side of the training step, in pixels [default: 128]
  --conv PATH    The CPU convolution: taps (functional/conv_cpu.py) or im2col
                 (functional/conv.py) [default: taps]
  --threads N    Threads; 1 makes the table a plain sum of one thread's CPU time
                 [default: 1]

Every op that the models call is wrapped by a timer of this thread's CPU time
(``time.thread_time``: a process that waits for a core is not charged, so the table holds
on a shared machine); the convolution's stages (slab copies, GEMMs, epilogues, col2im)
are timed inside it. Rows nest: "conv forward" includes its stages. Printed: seconds and
share of the step, and the number of calls.
"""

import collections
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.functional import conv, conv_cpu, conv_transform_cpu
from cupyden.models import build_model
from cupyden.optim import Adam, Parameters
from cupyden.training import train_step

NETS = {"dncnn": {"arch": "dncnn"}, "unet": {"arch": "unet"},
        "topaz-unet": {"arch": "topaz-unet", "base_width": 11, "top_width": 5}}
SPENT = collections.defaultdict(float)
CALLS = collections.Counter()


def wrap(module, name, label):
    """Replace module.name by a timed twin (each call adds to SPENT[label])."""
    f = getattr(module, name)

    def timed(*args, **kwargs):
        t0 = time.thread_time()
        try:
            return f(*args, **kwargs)
        finally:
            SPENT[label] += time.thread_time() - t0
            CALLS[label] += 1
    setattr(module, name, timed)


def instrument():
    import cupyden.layers.conv as lconv
    import cupyden.layers.simple as simple
    import cupyden.models.topaz as topaz
    import cupyden.models.unet as unet
    import cupyden.optim.adam as adam
    wrap(lconv, "conv2d_forward", "conv forward")
    wrap(lconv, "conv2d_backward", "conv backward")
    for name in ("_fill", "_correlate", "_correlate_wgrad", "_activate_into"):
        wrap(conv_cpu, name, "  conv_cpu." + name)
    for name in ("correlate", "weight_gradient"):
        wrap(conv_transform_cpu, name, "  conv_transform_cpu." + name)
    for name in ("im2col", "col2im_add", "pad_zeros", "activation_bias_backward"):
        wrap(conv, name, "  conv." + name)
    for name in ("maxpool2d_forward", "maxpool2d_backward", "upsample2d_forward",
                 "upsample2d_backward", "concat_forward", "concat_backward"):
        wrap(simple, name, name)
    for module in (unet, topaz):
        wrap(module, "reflection_pad2d_forward", "reflection_pad2d_forward")
        wrap(module, "reflection_pad2d_backward", "reflection_pad2d_backward")
    wrap(adam, "adam_step_reference", "adam step")


def main():
    args = docopt(__doc__)
    backend.set_cpu_threads(int(args["--threads"]))
    instrument()
    model = build_model(NETS[args["--net"]]).to(numpy, numpy.float32)
    rng = numpy.random.default_rng(0)
    with conv.cpu_conv(args["--conv"]):
        if args["--mode"] == "forward":
            model.eval()
            s = int(args["--size"])
            x = rng.standard_normal((1, 1, s, s)).astype(numpy.float32)

            def run():
                model.forward(x)
            what = "forward 1x1x%dx%d" % (s, s)
        else:
            model.train()
            params = Parameters(model)
            opt = Adam(params, lr=1e-3)
            shape = (int(args["--batch"]), 1, int(args["--patch"]), int(args["--patch"]))
            x = rng.standard_normal(shape).astype(numpy.float32)
            t = rng.standard_normal(shape).astype(numpy.float32)

            def run():
                train_step(model, params, opt, "mse", x, t)
            what = "train step %dx%dx%dx%d" % shape
        run()                                                  # warm-up
        SPENT.clear()
        CALLS.clear()
        t0, w0 = time.thread_time(), time.perf_counter()
        run()
        total, wall = time.thread_time() - t0, time.perf_counter() - w0
    print("%s %s, conv path %s, %d thread(s): %.3f s CPU time of this thread, %.3f s wall"
          % (args["--net"], what, args["--conv"], backend.get_cpu_threads(), total, wall))
    for label, s in sorted(SPENT.items(), key=lambda kv: -kv[1]):
        print("  %-36s %7.3f s  %5.1f%%  %6d calls" % (label, s, 100 * s / total, CALLS[label]))
    rest = total - sum(s for k, s in SPENT.items() if not k.startswith("  "))
    print("  %-36s %7.3f s  %5.1f%%" % ("everything else", rest, 100 * rest / total))


if __name__ == "__main__":
    main()
