"""F2Fd on a simulated GroEL tomogram: PSNR against the clean volume, raw and Gaussian rows.

    python benchmarks/f2fd_tomogram.py simulate DIR [--size N] [--seed S]
        writes DIR/noisy.mrc, DIR/clean.mrc (5 Å/voxel, cupyden.simulate.simulate_tomogram)
        and DIR/baselines.json (raw, and the Gaussian whose sigma is best against the
        clean volume: an oracle, the strongest Gaussian there is)
    python benchmarks/f2fd_tomogram.py speed [PRECISION]
        times one forward pass of F2Fd's 3-D U-Net on 128^3 and 256^3 voxels (inference
        mode, dropout on), one training step on 4 patches of 64^3, and F2Fd's whole
        inference of a 256^3 volume (64^3 tiles, K x T = 4 x 4), on the GPU, at
        PRECISION (fp32, tf32 or fp16; default fp32)
    python benchmarks/f2fd_tomogram.py sweep DIR SECONDS CONFIG [CONFIG ...]
        for each CONFIG ("defaults", or NAME=VALUE,NAME=VALUE...), trains F2Fd on
        DIR/noisy.mrc for SECONDS (training time, evaluations excluded) and scores the
        denoised volume against DIR/clean.mrc after 1/8, 1/4, 1/2 and all of them
        (inference K x T = 2 x 2): where along training F2Fd is best. NAMEs: F2Fd's
        parameters (p, Vmask_pct, dropout_p, volumetric_scale_factor, total_samples,
        n_bernoulli_samples, subtomo_length, sphere_fraction=LO:HI) and nf, batch, lr,
        precision, seed
    python benchmarks/f2fd_tomogram.py score DIR DENOISED.mrc [LABEL]
        prints the table: PSNR over the whole volume (range of the clean volume), SSIM of
        the central z slice

Training and denoising are cupyden's own commands, timed by the caller, e.g.

    cupyden-train --pairs f2fd DIR/noisy.mrc --max-minutes 10 --steps 100000 -o DIR/train
    cupyden-denoise DIR/train/model.h5 DIR/noisy.mrc -o DIR/den
"""

import json
import os
import sys
import time

import mrcfile
import numpy

from cupyden import backend
from cupyden.baselines import best_gaussian, gaussian_lowpass
from cupyden.io.mrc import write_mrc
from cupyden.metrics import psnr, ssim
from cupyden.simulate import DEFAULT_MODEL, read_atoms, simulate_tomogram

SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)


def scores(estimate, clean):
    k = clean.shape[0] // 2
    rng = float(clean.max() - clean.min())
    return {"psnr": psnr(estimate, clean, rng), "ssim_central": ssim(estimate[k], clean[k], rng)}


def simulate(out, size=256, seed=0):
    xp = backend.select_device(None).xp
    os.makedirs(out, exist_ok=True)
    xyz, z = read_atoms(DEFAULT_MODEL)
    t0 = time.perf_counter()
    sim = simulate_tomogram(xyz, z, (size,) * 3, 5.0, seed=seed, xp=xp)
    t_sim = time.perf_counter() - t0
    write_mrc(os.path.join(out, "noisy.mrc"), sim.noisy, 5.0)
    write_mrc(os.path.join(out, "clean.mrc"), sim.clean, 5.0)
    noisy, clean = xp.asarray(sim.noisy), xp.asarray(sim.clean)
    sigma, _ = best_gaussian(noisy, clean, SIGMAS, ndim=3)
    gauss = backend.to_host(gaussian_lowpass(noisy, sigma, 3))
    result = {"params": sim.params, "seconds": t_sim, "gaussian_sigma": sigma,
              "raw": scores(sim.noisy, sim.clean), "gaussian": scores(gauss, sim.clean)}
    with open(os.path.join(out, "baselines.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("simulated %d^3 voxels, %d GroEL copies, in %.1f s; raw PSNR %.2f dB, Gaussian "
          "(sigma %.2f vox, oracle) %.2f dB" % (size, sim.params["particles"], t_sim,
                                                 result["raw"]["psnr"], sigma,
                                                 result["gaussian"]["psnr"]))


def speed(precision="fp32"):
    from cupyden import f2fd
    from cupyden.functional.conv import set_precision
    from cupyden.models import F2FdUNet
    from cupyden.optim import Adam, Parameters
    from cupyden.optim.loss_scale import LossScaler
    from cupyden.training import train_step

    xp = backend.select_device(None).xp
    dtype = set_precision(precision, xp)
    print("precision %s" % precision)
    model = F2FdUNet().to(xp, dtype).mc_dropout()
    pool = backend.cupy.get_default_memory_pool() if xp is not numpy else None
    for n in (128, 256):
        if pool:
            pool.free_all_blocks()
        x = xp.asarray(numpy.random.default_rng(0).standard_normal((1, 1, n, n, n)), dtype)
        model.forward(x)
        backend.synchronize(xp)
        if pool:
            print("memory pool after a %d^3 forward pass: %.1f GiB" % (n, pool.total_bytes() / 2 ** 30))
        t0 = time.perf_counter()
        for _ in range(3):
            model.forward(x)
        backend.synchronize(xp)
        print("forward %d^3: %.3f s" % (n, (time.perf_counter() - t0) / 3))
    model.train()
    params = Parameters(model)
    opt = Adam(params, 1e-3)
    scaler = LossScaler() if dtype == numpy.float16 else None
    x = xp.asarray(numpy.random.default_rng(1).standard_normal((4, 1, 64, 64, 64)), numpy.float32)
    train_step(model, params, opt, "mse", x, x, scaler)
    backend.synchronize(xp)
    t0 = time.perf_counter()
    for _ in range(5):
        train_step(model, params, opt, "mse", x, x, scaler)
    backend.synchronize(xp)
    print("train step, 4 x 64^3: %.3f s" % ((time.perf_counter() - t0) / 5))
    model.mc_dropout()
    volume = numpy.random.default_rng(2).standard_normal((256, 256, 256)).astype(numpy.float32)
    prm = f2fd.F2FdParams(subtomo_length=64)
    loader = f2fd.F2FdPairs(volume, prm, xp, n_val=1).loader(4, xp)
    next(loader)
    backend.synchronize(xp)
    t0 = time.perf_counter()
    for _ in range(10):
        next(loader)
    backend.synchronize(xp)
    print("F2Fd pairs, 4 x 64^3 from 256^3: %.4f s per batch" % ((time.perf_counter() - t0) / 10))
    for run in ("first (plans tuned)", "second"):
        t0 = time.perf_counter()
        f2fd.denoise(model, volume, prm, xp, 4, 4)
        print("F2Fd inference of 256^3, 64^3 tiles, K x T = 4 x 4, %s: %.1f s"
              % (run, time.perf_counter() - t0))


def sweep(out, seconds, *configs):
    """Each config: "defaults" or NAME=VALUE[,NAME=VALUE...] (sphere_fraction=LO:HI); all in
    one process, so that cuDNN plans are tuned once."""
    from cupyden import f2fd
    from cupyden.functional.conv import set_precision
    from cupyden.models import F2FdUNet
    from cupyden.optim import Adam, Parameters
    from cupyden.optim.loss_scale import LossScaler
    from cupyden.training import train_step

    xp = backend.select_device(None).xp
    with mrcfile.open(os.path.join(out, "noisy.mrc"), mode="r") as m:
        noisy = numpy.array(m.data)
    with mrcfile.open(os.path.join(out, "clean.mrc"), mode="r") as m:
        clean = numpy.array(m.data)
    x, norm = f2fd.prepare(noisy)
    print("| settings | steps | training s | PSNR (dB) | SSIM, central slice | scoring s |\n"
          "|---|---|---|---|---|---|")
    for label in configs:
        opts = {"nf": 48, "batch": 4, "lr": 1e-3, "precision": "fp32", "seed": 0}
        prm = {}
        for item in ([] if label == "defaults" else label.split(",")):
            key, value = item.split("=")
            if key == "sphere_fraction":
                prm[key] = tuple(float(v) for v in value.split(":"))
            elif key in f2fd.F2FdParams._fields:
                prm[key] = type(getattr(f2fd.F2FdParams(), key))(value)
            elif key in opts:
                opts[key] = type(opts[key])(value)
            else:
                raise SystemExit("unknown setting %s" % key)
        prm = f2fd.F2FdParams(**prm)
        dtype = set_precision(opts["precision"], xp)
        pairs = f2fd.F2FdPairs(x, prm, xp, opts["seed"], n_val=1)
        model = F2FdUNet(x.ndim, opts["nf"], 5, prm.dropout_p, opts["seed"]).to(xp, dtype).train()
        params = Parameters(model)
        opt = Adam(params, opts["lr"])
        scaler = LossScaler() if dtype == numpy.float16 else None
        loader = pairs.loader(opts["batch"], xp, opts["seed"])
        trained, steps = 0.0, 0
        for stop in (seconds / 8, seconds / 4, seconds / 2, seconds):
            backend.synchronize(xp)
            t0 = time.perf_counter()
            while trained + time.perf_counter() - t0 < stop:
                xb, yb = next(loader)
                train_step(model, params, opt, "mse", xb, yb, scaler)
                steps += 1
                if steps % 20 == 0:
                    backend.synchronize(xp)
            backend.synchronize(xp)
            trained += time.perf_counter() - t0
            t1 = time.perf_counter()
            s = scores(norm.invert(f2fd.denoise(model, x, prm, xp, 2, 2)), clean)
            print("| %s | %d | %.0f | %.2f | %.3f | %.1f |"
                  % (label, steps, trained, s["psnr"], s["ssim_central"],
                     time.perf_counter() - t1), flush=True)
            model.train()


def score(out, denoised, label="F2Fd"):
    with open(os.path.join(out, "baselines.json")) as f:
        base = json.load(f)
    with mrcfile.open(os.path.join(out, "clean.mrc"), mode="r") as m:
        clean = numpy.array(m.data)
    with mrcfile.open(denoised, mode="r") as m:
        den = numpy.array(m.data)
    rows = [("raw", base["raw"]), ("Gaussian (oracle sigma %.2f vox)" % base["gaussian_sigma"],
                                   base["gaussian"]), (label, scores(den, clean))]
    print("| method | PSNR (dB) | SSIM, central slice |\n|---|---|---|")
    for name, s in rows:
        print("| %s | %.2f | %.3f |" % (name, s["psnr"], s["ssim_central"]))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "speed":
        speed(*sys.argv[2:3])
    elif cmd == "sweep":
        sweep(args[0], float(args[1]), *args[2:])
    elif cmd == "simulate":
        size = int(args[args.index("--size") + 1]) if "--size" in args else 256
        seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
        simulate(args[0], size, seed)
    else:
        score(*args)
