"""File-to-file denoising of large micrographs: time, pixels processed, peak GPU memory.

Usage:
  bench_denoise.py [--sizes LIST] [--device N] [--dir DIR]

Options:
  --sizes LIST   Comma-separated micrograph sides in pixels [default: 4096,8192]
  --device N     GPU number, -1 for the CPU [default: 0]
  --dir DIR      Scratch folder [default: /tmp/bench_denoise]

Writes a DnCNN-12/32 model (seeded weights) and one synthetic float32 micrograph per size,
runs ``cupyden-denoise`` on each, and prints the wall time, the pixels processed relative
to the image (tiles with halos) and the peak of CuPy's memory pool.
"""

import os
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.cli import denoise
from cupyden.infer import halo_for, pixels_processed, plan_tiles
from cupyden.io.checkpoint import save_checkpoint
from cupyden.io.mrc import write_mrc
from cupyden.models import DnCNN


def main():
    args = docopt(__doc__)
    d = args["--dir"]
    os.makedirs(d, exist_ok=True)
    model = DnCNN()
    save_checkpoint(os.path.join(d, "model.h5"), model.state(), {"model": model.config()})
    dev = backend.select_device(args["--device"])
    print("device: %s" % dev.name)
    for size in (int(s) for s in args["--sizes"].split(",")):
        path = os.path.join(d, "mic%d.mrc" % size)
        img = numpy.random.default_rng(size).poisson(20, (size, size)).astype(numpy.float32)
        write_mrc(path, img, 1.0)
        tiles = plan_tiles(size, size, 2048, halo_for(model))
        if dev.is_gpu:
            pool = dev.xp.get_default_memory_pool()
            pool.free_all_blocks()
        t0 = time.perf_counter()
        rc = denoise.main([os.path.join(d, "model.h5"), path, "-o", os.path.join(d, "out"),
                           "-d", args["--device"], "--no-progress"])
        dt = time.perf_counter() - t0
        peak = pool.total_bytes() / 2 ** 30 if dev.is_gpu else float("nan")
        print("%dx%d: rc %d, %.2f s file to file (first call includes kernel compilation), "
              "%d tiles, %d px processed = %.4fx, GPU memory pool %.2f GiB"
              % (size, size, rc, dt, len(tiles), pixels_processed(tiles),
                 pixels_processed(tiles) / size ** 2, peak))


if __name__ == "__main__":
    main()
