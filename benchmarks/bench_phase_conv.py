"""Topaz's top decoder level on one GPU: upsample x2 + concat + 5x5 conv as two ops (the
path before session 10) against the phase convolution (``functional.phase_conv``), and
PyTorch's interpolate + cat + conv2d when torch is importable, in one run.

Usage:
  bench_phase_conv.py [--repeats N] [--modes LIST]

Options:
  --repeats N   Timed calls per row, after one untimed warm-up call [default: 10]
  --modes LIST  Precisions, of fp32,tf32,fp16 [default: fp32,tf32,fp16]

Rows (Topaz's UDenoiseNet: h has 2 nf = 96 channels, the skip is the 1-channel input,
64 filters of 5 x 5, LeakyReLU 0.1):
  infer 1x4096   forward of h (1, 96, 2048, 2048), skip (1, 1, 4096, 4096), no cache
  train 8x512    forward + backward of h (8, 96, 256, 256), skip (8, 1, 512, 512)
and, for the inference row, the phase path's stages: z = [h, space_to_depth(skip)], the
phase filters, the coarse convolution, depth_to_space. Milliseconds by CUDA events;
"ratio" is two-op time / phase time (> 1: the phase convolution is faster); "rel" is
||phase - two-op|| / ||two-op|| of the output. The whole network against PyTorch is
``bench_gpu.py --only topaz``.
"""

import sys

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.functional import phase_conv as pc
from cupyden.functional.conv import conv2d_backward, conv2d_forward, gpu_conv, set_precision
from cupyden.functional.upsample import upsample_concat_backward, upsample_concat_forward

ROWS = [("infer", 1, 2048), ("train", 8, 256)]          # (kind, N, coarse side)
CH, CS, F, K, SLOPE = 96, 1, 64, 5, 0.1


def two_ops(h, skip, w, b, train, dy):
    u, up = upsample_concat_forward(h, skip)
    y, conv = conv2d_forward(u, w, b, 1, K // 2, SLOPE, keep_cache=train)
    if train:
        upsample_concat_backward(conv2d_backward(dy, conv, True)[0], up)
    return y


def phases(h, skip, w, b, train, dy):
    y, cache = pc.upsample_concat_conv2d_forward(h, skip, w, b, SLOPE, keep_cache=train)
    if train:
        pc.upsample_concat_conv2d_backward(dy, cache, input_grad=False)
    return y


def stages(cp, h, skip, w, b, repeats):
    """The phase path's forward, stage by stage: {name: ms}."""
    z, v, b4 = pc.phase_concat(h, skip), pc.phase_weights(w, CH), cp.tile(b, 4)
    yz, _ = conv2d_forward(z, v, b4, 1, 1, SLOPE, keep_cache=False)
    return {"z = [h, s2d(skip)]": backend.gpu_time_ms(lambda: pc.phase_concat(h, skip),
                                                      repeats),
            "phase filters": backend.gpu_time_ms(lambda: pc.phase_weights(w, CH), repeats),
            "coarse conv": backend.gpu_time_ms(lambda: conv2d_forward(
                z, v, b4, 1, 1, SLOPE, keep_cache=False), repeats),
            "depth_to_space": backend.gpu_time_ms(lambda: pc.depth_to_space(yz), repeats)}


def torch_time(kind, N, S, mode, repeats):
    try:
        import torch
    except ImportError:
        return None
    import torch.nn.functional as tf
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    dt = torch.float16 if mode == "fp16" else torch.float32
    dev = torch.device("cuda")
    h = torch.randn(N, CH, S, S, device=dev, dtype=dt).to(memory_format=torch.channels_last)
    skip = torch.randn(N, CS, 2 * S, 2 * S, device=dev, dtype=dt)
    conv = torch.nn.Conv2d(CH + CS, F, K, padding=K // 2).to(dev, dt)
    conv = conv.to(memory_format=torch.channels_last)
    h.requires_grad_(kind == "train")

    def run():
        with torch.set_grad_enabled(kind == "train"):
            u = torch.cat([tf.interpolate(h, scale_factor=2, mode="nearest"), skip], 1)
            y = tf.leaky_relu(conv(u), SLOPE)
            if kind == "train":
                y.backward(torch.ones_like(y))
    run()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / repeats


def main(argv=None):
    args = docopt(__doc__, argv)
    if backend.gpu_count() == 0:
        print("bench_phase_conv.py needs a GPU: %s" % backend.why_no_gpu(), file=sys.stderr)
        return 2
    cp = backend.gpu_module()
    repeats = int(args["--repeats"])
    print("device: %s" % backend.Device(0).name)
    print("| row | precision | two ops ms | phase ms | ratio | rel | PyTorch ms |")
    print("|---|---|---|---|---|---|---|")
    for mode in args["--modes"].split(","):
        dtype = set_precision(mode, cp)
        rng = numpy.random.default_rng(0)
        with gpu_conv("cudnn"):
            for kind, N, S in ROWS:
                train = kind == "train"
                h = backend.channels_last_copy(cp.asarray(
                    rng.standard_normal((N, CH, S, S), numpy.float32).astype(dtype)))
                skip = cp.asarray(rng.standard_normal((N, CS, 2 * S, 2 * S), numpy.float32)
                                  .astype(dtype))
                w = cp.asarray(rng.standard_normal((F, CH + CS, K, K)) * 0.03, dtype)
                b = cp.asarray(rng.standard_normal(F) * 0.1, dtype)
                dy = backend.channels_last_copy(cp.ones((N, F, 2 * S, 2 * S), dtype))
                ms = {name: backend.gpu_time_ms(lambda fn=fn: fn(h, skip, w, b, train, dy),
                                                repeats)
                      for name, fn in (("two", two_ops), ("phase", phases))}
                err = float(cp.linalg.norm((phases(h, skip, w, b, False, dy)
                                            - two_ops(h, skip, w, b, False, dy))
                                           .astype(numpy.float32))
                            / cp.linalg.norm(two_ops(h, skip, w, b, False, dy)
                                             .astype(numpy.float32)))
                peer = torch_time(kind, N, S, mode, repeats)
                print("| %s %dx%d | %s | %.2f | %.2f | %.2f | %.1e | %s |"
                      % (kind, N, 2 * S, mode, ms["two"], ms["phase"], ms["two"] / ms["phase"],
                         err, "-" if peer is None else "%.2f" % peer), flush=True)
                if not train:
                    for name, t in stages(cp, h, skip, w, b, repeats).items():
                        print("|   %s | %s | | %.2f | | | |" % (name, mode, t))
    set_precision("fp32", cp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
