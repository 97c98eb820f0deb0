"""Loader overhead and host memory while streaming a patch store from disk (GPU).

Usage:
  bench_loader.py [--gb G] [--steps N] [--batch-size N] [--patch-size PX] [--dir DIR]

Options:
  --gb G            Size of the patch store to build, in GB [default: 4]
  --steps N         Training steps timed in each mode [default: 300]
  --batch-size N    Patch pairs per step [default: 16]
  --patch-size PX   Patch side in pixels [default: 256]
  --dir DIR         Where to build the store [default: /tmp]

Share of step time spent waiting for data = 1 - t(batch already on the GPU) / t(loader),
both over the same steps of DnCNN-12/32 training with Adam (the host thread's wait on the
queue would count GPU compute too, since kernels are queued asynchronously). Host RSS is
sampled every 25 steps while the loader streams the whole store, which is larger than the
memory the process holds.
"""

import os
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.io.loader import Loader
from cupyden.io.store import PatchStore, PatchStoreWriter
from cupyden.models import DnCNN
from cupyden.optim import Adam, Parameters
from cupyden.training import train_step


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    args = docopt(__doc__)
    gb, steps = float(args["--gb"]), int(args["--steps"])
    B, P = int(args["--batch-size"]), int(args["--patch-size"])
    dev = backend.select_device("0")
    xp = dev.xp
    path = os.path.join(args["--dir"], "bench_store.h5")
    pair_bytes = 2 * P * P * 4
    n = int(gb * 1e9 / pair_bytes) // B * B
    rng = numpy.random.default_rng(0)
    t0 = time.perf_counter()
    with PatchStoreWriter(path, P) as w:
        chunk = rng.standard_normal((256, 1, P, P)).astype(numpy.float32)
        for i in range(0, n, 256):
            m = min(256, n - i)
            w.append("train", chunk[:m] + i, chunk[:m] * 0.5)
        w.append("val", chunk[:16], chunk[:16])
    print("device: %s" % dev.name)
    print("store: %d pairs of %d px, %.2f GB on disk, built in %.0f s"
          % (n, P, os.path.getsize(path) / 1e9, time.perf_counter() - t0))
    store = PatchStore(path)
    model = DnCNN(12, 32).to(xp, numpy.float32).train()
    params = Parameters(model)
    opt = Adam(params)
    x = xp.asarray(rng.standard_normal((B, 1, P, P)), numpy.float32)
    y = x * 0.5
    for _ in range(5):
        train_step(model, params, opt, "mse", x, y)
    backend.synchronize(xp)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, params, opt, "mse", x, y)
    backend.synchronize(xp)
    t_fixed = time.perf_counter() - t0
    print("step time: %.2f ms with the batch on the GPU" % (1e3 * t_fixed / steps))
    t0 = time.perf_counter()
    for _ in range(20):                       # host time to queue a step (no synchronisation)
        train_step(model, params, opt, "mse", x, y)
    print("host time to queue one step: %.2f ms" % (1e3 * (time.perf_counter() - t0) / 20))
    backend.synchronize(xp)
    real_read = store.read
    t0 = time.perf_counter()
    hx = backend.pinned_empty((B, 1, P, P), numpy.float32)
    hy = backend.pinned_empty((B, 1, P, P), numpy.float32)
    for k in range(20):
        real_read("train", numpy.sort(rng.choice(n, B, replace=False)), hx, hy)
    t_read = (time.perf_counter() - t0) / 20
    from cupyden.io.patches import augment
    t0 = time.perf_counter()
    for k in range(20):
        augment(hx, hy, numpy.random.default_rng(k))
    print("producer work per batch: read %.2f ms, augment %.2f ms"
          % (1e3 * t_read, 1e3 * (time.perf_counter() - t0) / 20))
    modes = [("pipeline only (no read, no augmentation)", 2, False, True),
             ("read, no augmentation", 2, False, False),
             ("read and augmentation", 2, True, False),
             ("read and augmentation, 3 slots", 3, True, False)]
    for label, slots, aug, stub in modes:
        store.read = (lambda *a, **k: None) if stub else real_read
        loader = Loader(store, B, xp, seed=0, slots=slots, do_augment=aug)
        for _ in range(5):
            train_step(model, params, opt, "mse", *next(loader))
        backend.synchronize(xp)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, params, opt, "mse", *next(loader))
        backend.synchronize(xp)
        t_loader = time.perf_counter() - t0
        print("loader, %s: %.2f ms per step; share of step time waiting for data: %.1f%%"
              % (label, 1e3 * t_loader / steps, 100 * max(0.0, 1 - t_fixed / t_loader)))
        loader.close()
    store.read = real_read
    loader = Loader(store, B, xp, seed=0)
    # stream the whole store once and watch host memory
    rss = [rss_mb()]
    per_epoch = loader.per_epoch
    t0 = time.perf_counter()
    for k in range(per_epoch):
        train_step(model, params, opt, "mse", *next(loader))
        if k % 25 == 0:
            backend.synchronize(xp)
            rss.append(rss_mb())
    backend.synchronize(xp)
    rss.append(rss_mb())
    loader.close()
    print("streamed %d batches (%.2f GB of patches) in %.0f s; host RSS %.0f MB at start, "
          "min %.0f, max %.0f, end %.0f MB" % (per_epoch, per_epoch * B * pair_bytes / 1e9,
                                                time.perf_counter() - t0, rss[0], min(rss),
                                                max(rss), rss[-1]))
    store.close()
    os.remove(path)


if __name__ == "__main__":
    main()
