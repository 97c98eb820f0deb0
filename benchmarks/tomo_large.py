"""Denoise a large tomogram with the 3-D U-Net: wall time and the GPU memory pool's peak.

Usage:
  tomo_large.py [--shape DHW] [--device N] [--precision P] [--odd] [--cli] [--dir DIR]

Options:
  --shape DHW      Volume shape in voxels, D,H,W [default: 512,1024,1024]
  --device N       GPU number, -1 for the CPU [default: 0]
  --precision P    auto, fp32, tf32 or fp16 (as cupyden-denoise) [default: auto]
  --odd            Also denoise a second half and average (cryoCARE's way): two passes.
  --cli            Also run cupyden-denoise file to file (writes the volume as MRC to DIR).
  --dir DIR        Scratch folder for the model (and --cli's files) [default: /tmp/tomo_large]

A freshly initialised ``UNet3d`` (cupyden-train's default for half tomograms: base 16,
depth 3, receptive field 96 voxels) is saved as a model.h5 and loaded with
``cupyden.load_model``; a random float32 volume is denoised with ``cupyden.denoise`` (tiles
from ``infer.volume_tile``, one normalisation). The first call on a small volume builds the
cuDNN plans of the network (not timed); then the large volume is denoised twice: the first
large call times the plans of its tile shapes, the second is the steady state.

The peak is the high-water mark of CuPy's default memory pool (``total_bytes()``: bytes
held, used or cached), sampled every 2 ms by a thread and read again at the end (the
pool does not give memory back by itself, so the last value is the peak too). Issue 18's
target: a 512 x 1024 x 1024 float32 tomogram in under 60 s with a pool under 24 GB.
"""

import os
import threading
import time

import numpy
from docopt import docopt

import cupyden
from cupyden import backend
from cupyden.infer import halo_for, pixels_processed, plan_boxes, volume_tile
from cupyden.io.checkpoint import save_checkpoint
from cupyden.models import UNet3d


class PoolPeak:
    """The largest ``total_bytes()`` of a memory pool while the block runs."""

    def __init__(self, pool):
        self.pool, self.peak, self._stop = pool, 0, threading.Event()

    def __enter__(self):
        self.pool.free_all_blocks()
        self.peak = self.pool.total_bytes()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.pool.total_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.pool.total_bytes())


def main():
    args = docopt(__doc__)
    shape = tuple(int(n) for n in args["--shape"].split(","))
    d = args["--dir"]
    os.makedirs(d, exist_ok=True)
    net = UNet3d()
    path = os.path.join(d, "model.h5")
    save_checkpoint(path, net.state(), {"model": net.config(), "pairs": "halves",
                                        "normalize": "robust", "bin": 1})
    model = cupyden.load_model(path, device=args["--device"], precision=args["--precision"])
    dev = model.device
    print("device: %s; UNet3d base 16 depth 3 (receptive field %d, halo %d), precision %s"
          % (dev.name, net.receptive_field, halo_for(net), model.precision))
    itemsize = numpy.dtype(model.network.dtype).itemsize
    tile = volume_tile(shape, net, itemsize)
    boxes = plan_boxes(shape, tile, halo_for(net), net.multiple)
    print("volume %s float32 (%.2f GiB): cores %s, %d windows, %.3fx the voxels processed"
          % ("x".join(map(str, shape)), numpy.prod(shape) * 4 / 2 ** 30, tile, len(boxes),
             pixels_processed(boxes) / numpy.prod(shape)))
    rng = numpy.random.default_rng(0)
    warm = rng.standard_normal(tuple(min(128, n) for n in shape), dtype=numpy.float32)
    cupyden.denoise(model, warm)                          # plans of the network, untimed
    even = rng.standard_normal(shape, dtype=numpy.float32) * 3 + 10
    odd = even + rng.standard_normal(shape, dtype=numpy.float32) if args["--odd"] else None
    pool = dev.xp.get_default_memory_pool() if dev.is_gpu else None
    for run in ("first (times its tile shapes' plans)", "second (steady state)"):
        meter = PoolPeak(pool) if pool is not None else None
        if meter:
            meter.__enter__()
        t0 = time.perf_counter()
        out = cupyden.denoise(model, even, odd=odd)
        backend.synchronize(dev.xp)
        dt = time.perf_counter() - t0
        if meter:
            meter.__exit__()
        print("cupyden.denoise, %s%s: %.2f s host to host, memory pool peak %s; output %s %s"
              % (run, ", both halves averaged" if odd is not None else "", dt,
                 "%.2f GiB" % (meter.peak / 2 ** 30) if meter else "n/a (CPU)",
                 out.shape, out.dtype))
        out = None
    if args["--cli"]:
        from cupyden.cli import denoise
        from cupyden.io.mrc import write_mrc

        src = os.path.join(d, "tomo.mrc")
        write_mrc(src, even, 10.0)
        t0 = time.perf_counter()
        rc = denoise.main([path, src, "-o", os.path.join(d, "out"), "-d", args["--device"],
                           "--precision", args["--precision"], "--no-progress", "-v"])
        print("cupyden-denoise file to file (in this process, plans known): rc %d, %.2f s"
              % (rc, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
