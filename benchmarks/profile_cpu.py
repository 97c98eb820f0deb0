"""Where the CPU time of a forward pass or a training step goes, op by op.

Usage:
  profile_cpu.py [--net NET] [--mode MODE] [--size PX] [--batch N] [--patch PX]
                 [--conv PATH] [--threads N] [--by-layer]

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
  --by-layer     Split the convolution stages by layer (C->F KxK @HxW).

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
#: With --by-layer: the convolution layer running now, appended to its stages' labels.
LAYER = {"on": False, "now": ""}


def wrap(owner, name, label, layer=False):
    """Replace owner.name (a module's function or a class's method) by a timed twin
    (each call adds to SPENT[label]); ``layer``: a Conv2d method, which names the layer
    for its stages' labels with --by-layer."""
    f = getattr(owner, name)

    def timed(*args, **kwargs):
        if layer and LAYER["on"]:
            w = args[0].params["w"]
            x = args[1] if name == "forward" else args[0].cache.x
            LAYER["now"] = " [%d->%d %dx%d @%d]" % (w.shape[1], w.shape[0], w.shape[2],
                                                    w.shape[3], x.shape[2])
        key = label + (LAYER["now"] if label.startswith("  ") else "")
        t0 = time.thread_time()
        try:
            return f(*args, **kwargs)
        finally:
            SPENT[key] += time.thread_time() - t0
            CALLS[key] += 1
    setattr(owner, name, timed)


def instrument():
    import cupyden.layers.conv as lconv
    import cupyden.layers.simple as simple
    import cupyden.losses as losses
    import cupyden.models.topaz as topaz
    import cupyden.models.unet as unet
    import cupyden.optim.adam as adam
    import cupyden.optim.params as params
    wrap(lconv.Conv2d, "forward", "conv forward (layer)", layer=True)
    wrap(lconv.Conv2d, "backward", "conv backward (layer, with grads +=)", layer=True)
    for name in ("_fill", "_correlate", "_correlate_wgrad", "_activate_into",
                 "activation_gradient", "weight_gradient_taps", "input_gradient_taps"):
        wrap(conv_cpu, name, "  conv_cpu." + name)
    wrap(conv_transform_cpu, "correlate", "  conv_transform_cpu.correlate (fwd, dx)")
    wrap(conv_transform_cpu, "weight_gradient", "  conv_transform_cpu.weight_gradient")
    for name in ("im2col", "col2im_add", "pad_zeros"):
        wrap(conv, name, "  conv." + name)
    for cls in (simple.MaxPool2d, simple.UpsampleConcat, lconv.UpsampleConcatConv2d):
        wrap(cls, "forward", cls.__name__ + " forward")
        wrap(cls, "backward", cls.__name__ + " backward")
    for module in (unet, topaz):
        wrap(module, "reflection_pad2d_forward", "reflection_pad2d_forward")
        wrap(module, "reflection_pad2d_backward", "reflection_pad2d_backward")
        wrap(module, "add_gradients", "add_gradients (skips)")
    wrap(losses.Objective, "forward", "loss forward")
    wrap(losses.Objective, "backward", "loss backward")
    wrap(params.Parameters, "zero_grad", "zero_grad")
    wrap(adam, "adam_step_reference", "adam step")


def main():
    args = docopt(__doc__)
    backend.set_cpu_threads(int(args["--threads"]))
    LAYER["on"] = bool(args["--by-layer"])
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
