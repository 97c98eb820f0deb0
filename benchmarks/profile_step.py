"""Where the host time of one training step goes (cProfile of the Python side).

Usage:
  profile_step.py [--device N] [--batch-size N] [--patch-size PX] [--steps N] [--top N]

Options:
  --device N        GPU number or -1 [default: 0]
  --batch-size N    [default: 16]
  --patch-size PX   [default: 256]
  --steps N         Profiled steps, after 3 warm-up steps [default: 10]
  --top N           Rows of the profile to print [default: 30]

On a GPU the host only queues kernels: the profile shows the per-call overhead of the
engine (CuPy calls, Python), which must stay below the GPU's step time or the GPU waits.
"""

import cProfile
import pstats
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.models import DnCNN
from cupyden.optim import Adam, Parameters
from cupyden.training import train_step


def main():
    args = docopt(__doc__)
    dev = backend.select_device(args["--device"])
    xp = dev.xp
    B, P, n = int(args["--batch-size"]), int(args["--patch-size"]), int(args["--steps"])
    model = DnCNN().to(xp, numpy.float32).train()
    params = Parameters(model)
    opt = Adam(params)
    x = xp.asarray(numpy.random.default_rng(0).standard_normal((B, 1, P, P)), numpy.float32)
    for _ in range(3):
        train_step(model, params, opt, "mse", x, x * 0.5)
    backend.synchronize(xp)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(n):
        train_step(model, params, opt, "mse", x, x * 0.5)
    prof.disable()
    host = time.perf_counter() - t0
    backend.synchronize(xp)
    total = time.perf_counter() - t0
    print("device: %s; host time to queue a step %.2f ms, step %.2f ms (profiled)"
          % (dev.name, 1e3 * host / n, 1e3 * total / n))
    pstats.Stats(prof).sort_stats("tottime").print_stats(int(args["--top"]))


if __name__ == "__main__":
    main()
