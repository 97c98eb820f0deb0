#!/bin/bash
source .device/gpu-env.sh
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
L=$OUT/f; mkdir -p $L
T0=$SECONDS
timeout 45 python3 diag_gpu.py startup > $L/startup.log 2>&1; echo "startup rc $? at $((SECONDS-T0))" >> $L/startup.log
timeout 150 python3 benchmarks/bench_batch.py -n 60 --dtypes float32 > $L/batch.log 2>&1; echo "batch rc $? at $((SECONDS-T0))" >> $L/batch.log
timeout 45 python3 diag_gpu.py plans > $L/plans.log 2>&1; echo "plans rc $? at $((SECONDS-T0))" >> $L/plans.log
timeout 100 python3 -m pytest -x -q -m gpu -p no:cacheprovider tests/test_pipeline_denoise.py tests/test_plan_cache.py --durations=8 > $L/tests.log 2>&1; echo "tests rc $? at $((SECONDS-T0))" >> $L/tests.log
for f in startup batch plans tests; do echo "=== $f"; tail -n 22 $L/$f.log; done
