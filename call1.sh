#!/bin/bash
# Lead's GPU call 1 (2 x H200): K2 protocol then bench_batch on GPU 1; GPU tests, bench_gpu and Topaz equivalence on GPU 0.
source .device/gpu-env.sh
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
python3 -c "import cupy, cudnn; print('cupy', cupy.__version__, 'frontend', cudnn.__version__)"
T0=$SECONDS
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 400 python3 benchmarks/k2_protocol.py .k2/K2.mrc --recipe topaz-finetune -o /tmp/k2 --panel $OUT/k2_protocol_before_after.png > $L/k2.log 2>&1; echo "k2 rc $? at $((SECONDS-T0)) s" >> $L/k2.log
  cp /tmp/k2/k2_protocol.json /tmp/k2/history.csv /tmp/k2/evaluation.json $L/ 2>/dev/null
  timeout $((560-(SECONDS-T0))) python3 benchmarks/bench_batch.py -n 20 --dtypes float32,uint16 --device 0 > $L/batch.log 2>&1; echo "batch rc $? at $((SECONDS-T0)) s" >> $L/batch.log
) &
export CUDA_VISIBLE_DEVICES=0
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_pipeline_denoise.py tests/test_plan_cache.py tests/test_pipeline_train.py tests/test_movies.py tests/test_cudnn.py > $L/tests.log 2>&1; echo "tests rc $? at $((SECONDS-T0)) s" >> $L/tests.log
timeout 210 python3 benchmarks/bench_gpu.py --repeats 6 --modes tf32,fp16 --only "train topaz,infer topaz,train unet 8x512,infer unet,train dncnn-12/32,infer dncnn-12/32" --markdown $L/bench.md > $L/bench.log 2>&1; echo "bench rc $? at $((SECONDS-T0)) s" >> $L/bench.log
timeout $((560-(SECONDS-T0))) python3 benchmarks/topaz_equivalence.py --only 4k --repeats 2 > $L/topaz.log 2>&1; echo "topaz rc $? at $((SECONDS-T0)) s" >> $L/topaz.log
wait
tar czf $OUT/logs.tgz -C $OUT logs
for f in tests k2 bench topaz batch; do echo "=== $f"; tail -n 14 $L/$f.log; done
