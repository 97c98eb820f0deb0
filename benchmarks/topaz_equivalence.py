"""Topaz-Denoise's pretrained weights: cupyden's output and time against Topaz's own.

Runs Topaz-Denoise 0.3.20 (PyTorch, on the GPU) and cupyden (``topaz:NAME``) on the same
micrographs in one process and prints relative differences and times: cupyden in strict
fp32, tf32 and fp16 (cuDNN), Topaz with PyTorch's TF32 off and on. Targets (issue 15): at
fp32 with TF32 off, cupyden's tiled output equals Topaz's whole-image output to rel < 1e-4
on the 4096^2 micrograph, and cupyden denoises it at least 3x faster than Topaz's own
tiling in the same precision (``speed-up`` lines). Needs torch and
topaz importable (on the GPU machine: ``../shared/device/prepare.sh --topaz`` puts Topaz
in .device/site, which gpu-env.sh adds to PYTHONPATH).

Topaz 0.3.20's ``load_model`` reads its weights through ``pkg_resources``, which Python
3.12 without setuptools lacks; the shim below loads the same file with ``torch.load``
and leaves every other Topaz function as it is.

Usage:
  topaz_equivalence.py [--model NAME] [--k2 MRC] [--repeats N] [--only LIST] [-d N]

Options:
  --only LIST    Micrographs, of crop,k2,4k [default: crop,k2,4k]
  -d N           GPU number, -1 for the CPU [default: 0]
  --model NAME   Topaz pretrained model [default: unet]
  --k2 MRC       The full K2 micrograph (3838 x 3710) [default: .device/data/k2.mrc]
  --repeats N    Timed repeats (after one warm-up) [default: 3]
"""

import os
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.data import k2_crop
from cupyden.infer import denoise_array
from cupyden.io.mrc import read_mrc
from cupyden.io.patches import normalization
from cupyden.io.torch_pickle import read_state_dict, topaz_pretrained
from cupyden.models import build_model
from cupyden.models.topaz import PRETRAINED, from_topaz_state
from cupyden.settings import set_precision


def topaz_model(name):
    import torch
    import topaz.denoising.models as tdm
    tdm.load_state_dict_from_pkg = lambda pkg, path, map_location="cpu": torch.load(
        topaz_pretrained(os.path.basename(path)), map_location="cpu")
    return tdm.load_model(name)


def timed(fn, repeats, sync):
    fn()
    sync()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        t.append(time.perf_counter() - t0)
    return out, min(t)


def rel(a, b):
    """||a - b|| / ||b - mean(b)||: relative to the signal, not to the micrograph's mean."""
    return float(numpy.linalg.norm(a - b) / numpy.linalg.norm(b - b.mean()))


def main():
    args = docopt(__doc__)
    import torch
    from topaz.denoise import Denoise
    name, repeats = args["--model"], int(args["--repeats"])
    device = backend.select_device(args["-d"])
    xp = device.xp
    tm = topaz_model(name).eval()
    if xp is not numpy:
        tm = tm.cuda()
    only = args["--only"].split(",")
    den = Denoise.__new__(Denoise)               # Denoise(model) rejects subclasses of Module
    den.model, den.device, den.dims = tm, next(tm.parameters()).device, 2
    den.use_cuda = xp is not numpy
    cfg = dict(PRETRAINED[name][1])
    weights = from_topaz_state(read_state_dict(topaz_pretrained(PRETRAINED[name][0])))
    models = {}
    for pad in (True, False):
        m = build_model(dict(cfg, pad=pad)).to(xp, numpy.float32).eval()
        m.load_state(weights)
        models[pad] = m
    precisions = ("fp32", "tf32", "fp16") if xp is not numpy else ("fp32",)
    tiled = {}
    for p in precisions:
        m = build_model(dict(cfg, pad=True)).to(xp, set_precision(p, xp)).eval()
        m.load_state(weights)
        tiled[p] = m
    set_precision("fp32", xp)
    print("device %s, torch %s (TF32 conv %s), model %s, receptive field %d px"
          % (device.name, torch.__version__, torch.backends.cudnn.allow_tf32, name,
             models[True].receptive_field))
    mics = {}
    if "crop" in only:
        mics["embedded K2 crop 2048x2048"] = numpy.asarray(k2_crop().data, numpy.float32)
    if "k2" in only and os.path.exists(args["--k2"]):
        mics["full K2 3838x3710"] = numpy.asarray(read_mrc(args["--k2"], ndim=2).data,
                                                  numpy.float32)
    rng = numpy.random.default_rng(0)
    if "4k" in only:
        mics["Poisson 4096x4096"] = rng.poisson(30.0, (4096, 4096)).astype(numpy.float32)
    sync_t = torch.cuda.synchronize if xp is not numpy else (lambda: None)
    sync_c = lambda: backend.synchronize(xp)      # noqa: E731
    for label, img in mics.items():
        norm = normalization(img, "meanstd")
        ours, t_ours = {}, {}
        for p in precisions:
            set_precision(p, xp)
            ours[p], t_ours[p] = timed(
                lambda: denoise_array(tiled[p], img, xp, 2048, 4, norm)[0], repeats, sync_c)
        set_precision("fp32", xp)
        stats = denoise_array(models[True], img, xp, 2048, 4, norm)[1]
        whole_c = norm.invert(backend.to_host(models[False].forward(
            backend.to_device(norm.apply(img), xp)[None, None]))[0, 0])
        print("%s: cupyden tiled (2048 + %d px halo, %.3fx pixels): %s"
              % (label, stats["halo"], stats["ratio"],
                 ", ".join("%s %.3f s" % (p, t_ours[p]) for p in precisions)))
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            whole, t_whole = timed(lambda: den.denoise(img, patch_size=-1), repeats, sync_t)
            tiled_t, t_tiled_t = timed(lambda: den.denoise(img, patch_size=1024, padding=500),
                                       repeats, sync_t)
            same = "tf32" if tf32 else "fp32"
            print("  Topaz with TF32 %s: whole image %.3f s, its tiling (1024 + 500 px) %.3f s;"
                  " speed-up, Topaz tiled / cupyden tiled %s: %.2fx (cupyden fp16: %.2fx)"
                  % ("on" if tf32 else "off", t_whole, t_tiled_t, same,
                     t_tiled_t / t_ours.get(same, t_ours["fp32"]),
                     t_tiled_t / t_ours.get("fp16", t_ours["fp32"])))
            print("    vs Topaz whole image: cupyden unpadded whole %.2e, cupyden padded tiled "
                  "%s %.2e, Topaz's own tiling (per-tile normalisation) %.2e"
                  % (rel(whole_c, whole), same, rel(ours.get(same, ours["fp32"]), whole),
                     rel(tiled_t, whole)))

if __name__ == "__main__":
    main()
