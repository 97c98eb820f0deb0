"""What the training loader's host thread spends on one batch, against a plain copy.

Usage:
  loader_host_cost.py [--batch-size N] [--patch-size PX] [--pairs N] [--batches N]
                      [--dir DIR]

Options:
  --batch-size N    Patch pairs per batch (the K2 recipe: 12) [default: 12]
  --patch-size PX   Patch side in pixels (the K2 recipe: 384) [default: 384]
  --pairs N         Pairs in the store (one K2 micrograph's training rows: 459)
                    [default: 459]
  --batches N       Batches timed [default: 60]
  --dir DIR         Where to build the store (a temporary folder inside it)
                    [default: /tmp]

The loader's thread (``io.loader.Loader``, host side of every GPU or CPU training step)
reads the batch's pairs from the HDF5 patch store (``PatchStore.read``: one slice read
per patch) and augments them (``io.patches.augment``: flips, rotations, view swaps). The
peer is a plain copy of the same bytes: gathering the batch's pairs from the same patches
held in a NumPy array. Both hold the GIL for most of their time, which the training
thread's kernel launches also need. Prints milliseconds per batch (means over
``--batches``) and each part's ratio to the copy.
"""

import os
import tempfile
import time

import numpy
from docopt import docopt

from cupyden.io.patches import augment
from cupyden.io.store import PatchStore, PatchStoreWriter


def main():
    args = docopt(__doc__)
    B, P, n, batches = (int(args[k]) for k in ("--batch-size", "--patch-size", "--pairs",
                                                "--batches"))
    rng = numpy.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args["--dir"]) as d:
        path = os.path.join(d, "store.h5")
        held = rng.standard_normal((n, 1, P, P)).astype(numpy.float32)
        with PatchStoreWriter(path, P) as w:
            w.append("train", held, -held)
            w.append("val", held[:1], -held[:1])
        store = PatchStore(path)
        hx = numpy.empty((B, 1, P, P), numpy.float32)
        hy = numpy.empty_like(hx)
        t = {"read": 0.0, "augment": 0.0, "copy": 0.0}
        for k in range(batches):
            idx = numpy.random.default_rng([0, k]).permutation(n)[:B]
            t0 = time.perf_counter()
            store.read("train", idx, hx, hy)
            t1 = time.perf_counter()
            augment(hx, hy, numpy.random.default_rng([0, 0, k]))
            t2 = time.perf_counter()
            numpy.take(held, idx, axis=0, out=hx)
            numpy.negative(numpy.take(held, idx, axis=0), out=hy)
            t["copy"] += time.perf_counter() - t2
            t["read"] += t1 - t0
            t["augment"] += t2 - t1
        store.close()
    ms = {k: 1e3 * v / batches for k, v in t.items()}
    print("batch of %d pairs of %d px (%.1f MB), %d batches, %d pairs in the store"
          % (B, P, 2 * B * P * P * 4 / 1e6, batches, n))
    for k in ("read", "augment", "copy"):
        print("%-8s %6.2f ms per batch (%.1fx the copy)" % (k, ms[k], ms[k] / ms["copy"]))
    print("loader total %.2f ms per batch (read + augment)" % (ms["read"] + ms["augment"]))


if __name__ == "__main__":
    main()
