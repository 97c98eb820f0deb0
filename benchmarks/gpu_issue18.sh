#!/bin/bash
# Issue 18 on one H200, from the repository root, in about 7.5 minutes (each step has a
# timeout; at most 9.5 minutes in all):   bash benchmarks/gpu_issue18.sh
# 1. the GPU tests of the 3-D ops and model (CuPy == NumPy, gradients, tiled == untiled);
# 2. tomo_large.py: a 512 x 1024 x 1024 float32 tomogram in fp16 (auto): wall time and the
#    memory pool's peak (targets: < 60 s, < 24 GB);
# 3. tomo_n2n.py at the issue's size (96 x 256 x 256, 64^3 patches, batch 4, tf32): N2N
#    trained 3 minutes, F2Fd 0.5 minutes (shorter: its K x T denoising adds ~1 minute),
#    scored against the potential (the issue's measure) and the noise-free tomogram.
# Results go to $OUT when it is set (tomo_n2n.txt, results.json, central_slices.png,
# gpu_issue18.log), else to $TMPDIR/cupyden-issue18/results.
set -u
W=${TMPDIR:-/tmp}/cupyden-issue18
R=${OUT:-$W/results}
mkdir -p "$W" "$R"
exec > >(tee "$R/gpu_issue18.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy; print('cupy', cupy.__version__, 'cuda', cupy.cuda.runtime.runtimeGetVersion())"

echo "== 1. GPU tests ($(date +%T))"
timeout 90 python3 -m pytest -q tests/test_volumes.py -k cupy 2>&1 | tail -4
timeout 60 python3 -m pytest -q tests/test_gradcheck.py -k "cupy and (unet3d or pad3d)" 2>&1 | tail -4

echo "== 2. tomo_large.py, fp16 (auto) ($(date +%T))"
timeout 150 python3 benchmarks/tomo_large.py --dir "$W/large"

echo "== 3. tomo_n2n.py, 96x256x256 ($(date +%T))"
timeout 330 python3 benchmarks/tomo_n2n.py -d 0 -o "$W/tomo" --minutes 3 --f2fd-minutes 0.5 \
    --precision tf32 | tee "$R/tomo_n2n.txt"
cp "$W/tomo/results.json" "$W/tomo/central_slices.png" "$R/" 2>/dev/null
echo "== done ($(date +%T)); results in $R"
