#!/bin/bash
# Lead's GPU call 2 (2 x H200): data-parallel training, Dask on two GPUs, the NCCL tests.
source .device/gpu-env.sh
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
L=$OUT/logs2; mkdir -p $L
T0=$SECONDS
timeout 200 python3 benchmarks/bench_ddp.py -o /tmp/ddp > $L/ddp.log 2>&1; echo "ddp rc $? at $((SECONDS-T0)) s" >> $L/ddp.log
timeout 200 python3 benchmarks/bench_batch.py --dtypes none --gpus 0,1 --gpus-n 40 --topaz no > $L/dask.log 2>&1; echo "dask rc $? at $((SECONDS-T0)) s" >> $L/dask.log
timeout $((560-(SECONDS-T0))) python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_distributed.py > $L/dist.log 2>&1; echo "dist rc $? at $((SECONDS-T0)) s" >> $L/dist.log
tar czf $OUT/logs2.tgz -C $OUT logs2
for f in ddp dask dist; do echo "=== $f"; tail -n 16 $L/$f.log; done
