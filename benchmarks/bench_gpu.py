"""cupyden against PyTorch eager on one GPU, in one run: train steps and 4k inference.

Usage:
  bench_gpu.py [--repeats N] [--blocks B] [--only TEXT] [--modes LIST] [--im2col]
               [--markdown FILE]

Options:
  --repeats N      Timed train steps per block (inference passes: N / 4, at least 3)
                   [default: 20]
  --blocks B       Timed blocks per measurement; the time is the best block's mean
                   [default: 3]
  --only TEXT      Run only the workloads whose name contains TEXT (comma: any of them).
  --modes LIST     Precisions to time, of fp32,tf32,fp16 (fp16: PyTorch fp16 and bf16)
                   [default: fp32,tf32,fp16]
  --im2col         Also time cupyden's im2col path (float32; slow on the large nets).
  --markdown FILE  Also write the table as Markdown to FILE.

Workloads (PERFORMANCE.md, issues 4 and 15):
  train dncnn-12/32 16x256    one Adam step on a batch of 16 x 1 x 256 x 256, MSE
  train unet 16x256           the same with the U-Net (base 32)
  train unet 8x512            the U-Net on the K2 recipe's batch (8 patches of 512 px)
  train topaz 8x512           Topaz-Denoise's UDenoiseNet (nf 48, Topaz 0.3.20's own
                              PyTorch module as the peer) on the recipe's batch
  train dncnn-17/64 16x256    a 17-layer, 64-channel DnCNN
  infer NET                   one 4096 x 4096 micrograph, one forward pass, no gradients

cupyden runs cuDNN fp32 (strict), tf32 and fp16 (float16 weights and activations, float32
master weights, dynamic loss scaling), and im2col (float32) with --im2col. PyTorch (a peer
in this benchmark only, never a dependency) runs fp32 (TF32 off), tf32, and fp16 / bf16
autocast with channels_last memory; its fp16 training uses GradScaler. Each time is the
best of ``--blocks`` blocks, and a block's time the mean of ``--repeats`` steps measured
with a synchronisation before and after, all after 5 warm-up steps (cupyden's cuDNN plans
are tuned during the warm-up); the same rule for both, as ``timeit`` takes the best of its
repeats (one pause of the host, or of the GPU's clocks, spoils a block, not the row). Each
measurement's block times are printed as it ends. Ratios are PyTorch time /
cupyden time in the same precision (> 1: cupyden is faster); cupyden fp16 is compared with
PyTorch's faster 16-bit autocast. Targets (issue 15): every training ratio >= 1.3 at tf32
and 16-bit; every 4096^2 inference at most half PyTorch's time (ratio >= 2). Run it alone
on the host: the 16 x 256^2 steps are bound by kernel launches, and another process on the
host's other GPU made them 1.5-4x slower (benchmarks/RESULTS.md, session 10).
"""

import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.functional.conv import gpu_conv, set_precision
from cupyden.models import build_model
from cupyden.optim import Adam, Parameters
from cupyden.optim.loss_scale import LossScaler
from cupyden.training import train_step

NETS = {"dncnn-12/32": {"arch": "dncnn", "depth": 12, "width": 32, "seed": 0},
        "unet": {"arch": "unet", "base": 32, "seed": 0},
        "topaz": {"arch": "topaz-unet", "seed": 0},
        "dncnn-17/64": {"arch": "dncnn", "depth": 17, "width": 64, "seed": 0}}
#: (kind, net, batch shape): the rows, in order
WORK = [("train", "topaz", (8, 1, 512, 512)), ("infer", "topaz", (1, 1, 4096, 4096)),
        ("train", "unet", (8, 1, 512, 512)), ("infer", "unet", (1, 1, 4096, 4096)),
        ("train", "unet", (16, 1, 256, 256)), ("train", "dncnn-12/32", (16, 1, 256, 256)),
        ("infer", "dncnn-12/32", (1, 1, 4096, 4096)), ("train", "dncnn-17/64", (16, 1, 256, 256)),
        ("infer", "dncnn-17/64", (1, 1, 4096, 4096))]
TORCH = ["fp32", "tf32", "fp16", "bf16"]


#: timed blocks per measurement (--blocks)
BLOCKS = 3


def timed(fn, repeats, sync, what=""):
    """Milliseconds per call of ``fn``: the best of ``BLOCKS`` blocks' means of ``repeats``
    calls, after 5 warm-up calls; prints every block's mean."""
    for _ in range(5):
        fn()
    sync()
    blocks = []
    for _ in range(BLOCKS):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        blocks.append(1000 * (time.perf_counter() - t0) / repeats)
    print("  %s: blocks %s ms" % (what, " ".join("%.1f" % b for b in blocks)), flush=True)
    return min(blocks)


# ----------------------------------------------------------------------------- cupyden

def cupyden_time(cp, net, mode, kind, shape, repeats):
    precision = "fp32" if mode == "im2col" else mode
    dtype = set_precision(precision, cp)
    rng = numpy.random.default_rng(0)
    with gpu_conv("im2col" if mode == "im2col" else "cudnn"):
        model = build_model(NETS[net]).to(cp, dtype)
        if kind == "train":
            model.train()
            params = Parameters(model)
            opt = Adam(params, lr=1e-4)
            scaler = LossScaler() if dtype == numpy.float16 else None
            x = cp.asarray(rng.standard_normal(shape, dtype=numpy.float32))
            t = cp.asarray(rng.standard_normal(shape, dtype=numpy.float32))
            ms = timed(lambda: train_step(model, params, opt, "mse", x, t, scaler), repeats,
                       lambda: backend.synchronize(cp), "cupyden %s %s %s" % (mode, kind, net))
        else:
            model.eval()
            x = cp.asarray(rng.standard_normal(shape, dtype=numpy.float32)).astype(dtype)
            ms = timed(lambda: model.forward(x), max(3, repeats // 4),
                       lambda: backend.synchronize(cp), "cupyden %s %s %s" % (mode, kind, net))
    set_precision("fp32", cp)
    return ms


# ----------------------------------------------------------------------------- PyTorch

def torch_net(torch, net):
    nn = torch.nn
    cfg = NETS[net]
    if cfg["arch"] == "topaz-unet":                   # Topaz-Denoise 0.3.20's own module
        from topaz.denoising.models import UDenoiseNet
        return UDenoiseNet(nf=48, base_width=11, top_width=5)
    if cfg["arch"] == "dncnn":
        d, w = cfg["depth"], cfg["width"]
        layers = [nn.Conv2d(1, w, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(d - 2):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(w, 1, 3, padding=1))
        body = nn.Sequential(*layers)

        class Residual(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = body

            def forward(self, x):
                return x - self.body(x)
        return Residual()

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

    b = cfg["base"]

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = block(1, b), block(b, 2 * b), block(2 * b, 4 * b)
            self.bt = block(4 * b, 8 * b)
            self.d3, self.d2 = block(12 * b, 4 * b), block(6 * b, 2 * b)
            self.d1, self.out = block(3 * b, b), nn.Conv2d(b, 1, 1)
            self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x):
            e1 = self.e1(x)
            e2 = self.e2(self.pool(e1))
            e3 = self.e3(self.pool(e2))
            bt = self.bt(self.pool(e3))
            d3 = self.d3(torch.cat([self.up(bt), e3], 1))
            d2 = self.d2(torch.cat([self.up(d3), e2], 1))
            d1 = self.d1(torch.cat([self.up(d2), e1], 1))
            return self.out(d1)
    return UNet()


def torch_time(torch, net, mode, kind, shape, repeats):
    torch.backends.cudnn.allow_tf32 = mode != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
    torch.backends.cudnn.benchmark = False            # eager defaults
    dev = torch.device("cuda")
    model = torch_net(torch, net).to(dev)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
    fmt = torch.channels_last if half else torch.contiguous_format
    model = model.to(memory_format=fmt)
    sync = torch.cuda.synchronize
    if kind == "train":
        x = torch.randn(shape, device=dev).to(memory_format=fmt)
        t = torch.randn(shape, device=dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=half or torch.float32, enabled=half is not None):
                y = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), t)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return timed(step, repeats, sync, "PyTorch %s %s %s" % (mode, kind, net))
    model.eval()
    x = torch.randn(shape, device=dev).to(memory_format=fmt)

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=half or torch.float32,
                                             enabled=half is not None):
            model(x)
    return timed(infer, max(3, repeats // 4), sync, "PyTorch %s %s %s" % (mode, kind, net))


# ----------------------------------------------------------------------------- main

def main():
    args = docopt(__doc__)
    repeats = int(args["--repeats"])
    global BLOCKS
    BLOCKS = int(args["--blocks"])
    cp = backend.gpu_module()
    if backend.gpu_count() == 0:
        raise SystemExit("bench_gpu.py needs a GPU: %s" % backend.why_no_gpu())
    import torch
    from cupyden.kernels import cudnn_fe
    info = cudnn_fe.info()
    dev = backend.Device(0)
    head = ("device: %s; PyTorch %s (cuDNN %s); cuDNN for cupyden: %s (frontend %s, %s)"
            % (dev.name, torch.__version__, torch.backends.cudnn.version(), info["cudnn"],
               info["frontend"], info["library"]))
    print(head, flush=True)
    picked = args["--modes"].split(",")
    modes = (["im2col"] if args["--im2col"] else []) + [m for m in ("fp32", "tf32", "fp16")
                                                         if m in picked]
    torch_modes = [m for m in TORCH if m in picked or (m == "bf16" and "fp16" in picked)]
    only = args["--only"].split(",") if args["--only"] else None
    rows = []
    for kind, net, shape in WORK:
        name = "%s %s %s" % (kind, net, "x".join(map(str, (shape[0], shape[-1]))))
        if only and not any(o in name for o in only):
            continue
        ours = {m: cupyden_time(cp, net, m, kind, shape, repeats) for m in modes}
        theirs = {m: torch_time(torch, net, m, kind, shape, repeats) for m in torch_modes}
        torch.cuda.empty_cache()
        cp.get_default_memory_pool().free_all_blocks()
        theirs["16-bit"] = min(theirs.get("fp16", numpy.nan), theirs.get("bf16", numpy.nan))
        ratios = ["%.2fx" % (theirs[t] / ours[m]) if m in ours else "-"
                  for m, t in (("fp32", "fp32"), ("tf32", "tf32"), ("fp16", "16-bit"))]
        row = ("| %s | %s | %s | %s |"
               % (name, " / ".join("%.1f" % ours[m] for m in modes),
                  " / ".join("%.1f" % theirs[m] for m in torch_modes), " | ".join(ratios)))
        rows.append(row)
        print(row, flush=True)
    table = "\n".join(
        [head, "",
         "| work | cupyden ms: %s | PyTorch ms: %s | fp32 ratio | tf32 ratio | 16-bit ratio |"
         % (" / ".join(modes), " / ".join(torch_modes)),
         "|---|---|---|---|---|---|"] + rows)
    print("\n" + table)
    if args["--markdown"]:
        with open(args["--markdown"], "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
