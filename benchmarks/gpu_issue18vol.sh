#!/bin/bash
# Issue 18, part B (tomograms: 3-D U-Net, N-D tiler, even/odd N2N) on one H200, from the
# repository root:   bash benchmarks/gpu_issue18vol.sh      (about 3 minutes)
# 1. the GPU tests of the new 3-D op and model (CuPy == NumPy, gradients, tiled == untiled);
# 2. fp16 training of the 3-D U-Net on a synthetic pair of half tomograms (cuDNN 3-D fp16);
# 3. tomo_large.py: a 512 x 1024 x 1024 float32 tomogram, fp16 (auto) and tf32: wall time
#    and the memory pool's peak (targets: < 60 s, < 24 GB).
set -u
W=${TMPDIR:-/tmp}/cupyden-issue18vol
mkdir -p "$W"

echo "== 1. GPU tests"
python3 -m pytest -q tests/test_volumes.py -k cupy
python3 -m pytest -q tests/test_gradcheck.py -k "cupy and (unet3d or pad3d)"

echo "== 2. fp16 N2N training on half tomograms (200 steps of 8 x 64^3)"
python3 - "$W" <<'PY'
import sys, numpy, mrcfile
rng = numpy.random.default_rng(0)
shape = (128, 512, 256)           # y: 384 training, 64 validation, 64 held-out rows
f = numpy.fft.rfftn(rng.standard_normal(shape))
k2 = (numpy.fft.fftfreq(shape[0])[:, None, None] ** 2 + numpy.fft.fftfreq(shape[1])[None, :, None] ** 2
      + numpy.fft.rfftfreq(shape[2])[None, None, :] ** 2)
clean = numpy.fft.irfftn(f * numpy.exp(-k2 / 0.004), s=shape, axes=(0, 1, 2)) * 60
for half in ("half1", "half2"):
    with mrcfile.new("%s/TS_01_%s.mrc" % (sys.argv[1], half), overwrite=True) as m:
        m.set_data((clean + rng.standard_normal(shape)).astype(numpy.float32))
PY
python3 bin/cupyden-train --pairs halves "$W/TS_01_half1.mrc" --odd "$W/TS_01_half2.mrc" \
    --precision fp16 --batch-size 8 --steps 200 --val-every 50 --no-progress -d 0 \
    --overwrite -o "$W/n2n" 2>&1 | tail -6

echo "== 3. tomo_large.py"
python3 benchmarks/tomo_large.py --dir "$W/large"
python3 benchmarks/tomo_large.py --dir "$W/large" --precision tf32
