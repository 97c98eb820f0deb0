"""Data-parallel training on several GPUs of one host against one GPU (issue 17).

Two questions, one run:

1. Speed (weak scaling): the default recipe's model (DnCNN-12/32) trained with --per-gpu
   patches per GPU per step of --patch-size px (16 x 256^2 at fp32 is compute-bound on an
   H200: about 34 ms per step), on one GPU, then on --gpus with a global batch of
   per-gpu x GPUs. Patches per second from the history's clock between step --warm and the
   last step (the first steps tune cuDNN plans in every new process). Target: >= 1.8x on
   two GPUs.
2. Equivalence: the first --loss-steps training losses (validation every step, so history
   keeps each step's loss) of a one-GPU run with a global batch of --loss-batch against the
   run on --gpus with the same seed and global batch, at fp32. Target: rel 1e-4.

Both read one synthetic patch store (smooth images and two noisy views; what is learnt
does not matter here). Run it on the GPU machine:

  NCCL_NVLS_ENABLE=0 python benchmarks/bench_ddp.py

Usage:
  bench_ddp.py [options]

Options:
  --gpus LIST        GPUs of the data-parallel runs [default: 0,1]
  --patch-size PX    [default: 256]
  --per-gpu N        Patches per GPU per step of the speed runs [default: 16]
  --steps N          Steps of each speed run [default: 300]
  --warm N           The rate is measured from this step on [default: 100]
  --loss-steps N     Training losses compared [default: 100]
  --loss-batch N     Global batch of the equivalence runs [default: 32]
  --precision P      fp32, tf32 or fp16 for the speed runs (the equivalence runs are
                     fp32) [default: fp32]
  --patches N        Training patches in the store [default: 1024]
  -o DIR             Work folder [default: ddp-bench]
"""

import datetime
import os

import numpy
from docopt import docopt

import cupyden
from cupyden import backend
from cupyden.io.store import PatchStoreWriter


def make_store(path, n, P, seed=0):
    """n training and 64 validation pairs: Gaussian-smoothed noise (sigma 4 px) as the
    signal, two independent Gaussian noise draws of sigma 1 as the views."""
    rng = numpy.random.default_rng(seed)
    k2 = numpy.fft.fftfreq(P)[:, None] ** 2 + numpy.fft.rfftfreq(P)[None, :] ** 2
    blur = numpy.exp(-2 * (numpy.pi * 4) ** 2 * k2)
    with PatchStoreWriter(path, P, attrs={"pairs": "gaussian", "bin": 1}) as w:
        for split, count in (("train", n), ("val", 64)):
            for i in range(0, count, 64):
                m = min(64, count - i)
                clean = numpy.fft.irfft2(numpy.fft.rfft2(rng.standard_normal((m, 1, P, P))) * blur,
                                         s=(P, P))
                clean /= clean.std()
                w.append(split, clean + rng.standard_normal(clean.shape),
                         clean + rng.standard_normal(clean.shape))


def rate(history, warm, batch):
    """Patches per second between the history rows at step ``warm`` and the last one."""
    rows = {r["step"]: r for r in history}
    last = history[-1]
    return (last["step"] - warm) * batch / (last["seconds"] - rows[warm]["seconds"])


def main():
    args = docopt(__doc__)
    gpus = [int(g) for g in args["--gpus"].split(",")]
    P, per, steps, warm = (int(args[k]) for k in ("--patch-size", "--per-gpu", "--steps", "--warm"))
    out = args["-o"]
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "patches_%d.h5" % P)
    if not os.path.exists(store):
        make_store(store, int(args["--patches"]), P)
    quiet = lambda *a: None      # noqa: E731
    common = dict(store=store, progress=False, log=quiet, seed=0)
    cp = backend.gpu_module()
    print("%s; cupy %s, NCCL %s, NCCL_NVLS_ENABLE=%s; %s" % (
        ", ".join(backend.Device(g).name for g in gpus), cp.__version__,
        backend.nccl_module().get_version(), os.environ.get("NCCL_NVLS_ENABLE", "unset (0 set by cupyden)"),
        datetime.date.today()))

    speed = dict(common, steps=steps, val_every=warm, val_patches=64,
                 precision=args["--precision"])
    _, h1 = cupyden.train(output_dir=os.path.join(out, "speed1"), device=str(gpus[0]),
                          batch_size=per, **speed)
    _, hn = cupyden.train(output_dir=os.path.join(out, "speed%d" % len(gpus)), gpus=gpus,
                          batch_size=per * len(gpus), **speed)
    r1, rn = rate(h1, warm, per), rate(hn, warm, per * len(gpus))
    print("\nspeed, DnCNN-12/32, %s, %d x %d^2 patches per GPU per step, steps %d-%d:"
          % (args["--precision"], per, P, warm, steps))
    print("| GPUs | global batch | patches/s | vs one GPU |")
    print("|---|---|---|---|")
    print("| 1 | %d | %.0f | 1.00x |" % (per, r1))
    print("| %d | %d | %.0f | %.2fx |" % (len(gpus), per * len(gpus), rn, rn / r1))

    n, B = int(args["--loss-steps"]), int(args["--loss-batch"])
    same = dict(common, steps=n, val_every=1, val_patches=8, precision="fp32", batch_size=B)
    _, l1 = cupyden.train(output_dir=os.path.join(out, "loss1"), device=str(gpus[0]), **same)
    _, ln = cupyden.train(output_dir=os.path.join(out, "loss%d" % len(gpus)), gpus=gpus, **same)
    a = numpy.array([r["train_loss"] for r in l1])
    b = numpy.array([r["train_loss"] for r in ln])
    diff = numpy.abs(b - a) / numpy.abs(a)
    print("\nequivalence, fp32, global batch %d of %d^2, seed 0: the first %d training losses"
          % (B, P, n))
    print("max rel difference %.2e (step %d), median %.2e; step 1: %.6f vs %.6f; step %d: "
          "%.6f vs %.6f" % (diff.max(), int(diff.argmax()) + 1, numpy.median(diff), a[0], b[0],
                            n, a[-1], b[-1]))
    print("target: >= 1.8x patches/s on two GPUs (%s), rel <= 1e-4 (%s)"
          % ("met" if rn / r1 >= 1.8 else "missed", "met" if diff.max() <= 1e-4 else "missed"))


if __name__ == "__main__":
    main()
