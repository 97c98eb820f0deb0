#!/bin/bash
# Issue 17 on the GPU machine with two GPUs (kind nvidia-h200-x2), from the repository root:
#   bash benchmarks/gpu_issue17.sh
# 1. the GPU tests of the movie readers, the streaming store and the data-parallel path
#    (NCCL on two GPUs against one GPU);
# 2. bench_ddp.py: one GPU vs --gpus 0,1 patches/s, and the first 100 fp32 losses of both;
# 3. a rank killed mid-run: the command must end within seconds, exit status 2, naming rank 1;
# 4. host memory while building a store on the GPU from 20 4k micrographs.
set -u
export NCCL_NVLS_ENABLE=0
W=${TMPDIR:-/tmp}/cupyden-issue17
mkdir -p "$W"

echo "== 1. GPU tests"
python3 -m pytest -q tests/test_movies.py tests/test_pipeline.py tests/test_distributed.py \
    tests/test_io.py -k "cupy or gpu or nccl"

echo "== 2. bench_ddp.py"
timeout 600 python3 benchmarks/bench_ddp.py -o "$W/ddp"

echo "== 3. a rank that dies"
python3 bin/cupyden-train --gpus 0,1 --store "$W/ddp/patches_256.h5" --steps 1000000 \
    --batch-size 32 --no-progress -o "$W/kill" > "$W/kill.log" 2>&1 &
LAUNCHER=$!
sleep 45
RANK1=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader -i 1 | head -1 | tr -d ' ')
echo "killing rank 1 (pid $RANK1, the process on GPU 1) at $(date +%T)"
kill -9 "$RANK1"
wait "$LAUNCHER"
echo "cupyden-train exit status $? at $(date +%T) (expected 2, within ~15 s); its last lines:"
tail -3 "$W/kill.log"

echo "== 4. host memory while building a store on GPU 0"
timeout 900 python3 benchmarks/store_rss.py -d 0 --n 20 --work "$W/rss" | tail -8
