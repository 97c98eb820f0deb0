"""Which 3-D network for Noise2Noise on half tomograms: receptive field, halo, parameters and
one training step of the two candidates (issue 18; benchmarks/RESULTS.md).

Usage:
  tomo_arch_choice.py [--size S] [--batch B] [--repeats R]

Options:
  --size S      Patch side in voxels (a multiple of 32) [default: 32]
  --batch B     Patches per step [default: 2]
  --repeats R   Timed steps per network, the first including warm-up [default: 3]

Runs on NumPy (the CPU) in float32: one forward and backward pass per step.
"""

import time

import numpy
from docopt import docopt

from cupyden.infer import halo_for
from cupyden.models import F2FdUNet, UNet3d


def main():
    args = docopt(__doc__)
    S, B = int(args["--size"]), int(args["--batch"])
    x = numpy.random.default_rng(0).standard_normal((B, 1, S, S, S)).astype(numpy.float32)
    for name, model in (("UNet3d base 16 depth 3 (cryoCARE-like)", UNet3d()),
                        ("F2FdUNet 48 features depth 5, dropout 0", F2FdUNet(ndim=3, dropout_p=0.0))):
        model.to(numpy, numpy.float32).train()
        times = []
        for _ in range(int(args["--repeats"])):
            t0 = time.perf_counter()
            y = model.forward(x)
            model.backward(y - x)
            times.append(time.perf_counter() - t0)
        print("%s: receptive field %d, halo %d, %d parameters, step %d x %d^3: %s s"
              % (name, model.receptive_field, halo_for(model), model.n_parameters(), B, S,
                 ", ".join("%.2f" % t for t in times)))


if __name__ == "__main__":
    main()
