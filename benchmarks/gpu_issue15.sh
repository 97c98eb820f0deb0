#!/bin/bash
# Issue 15 on one GPU, in one go: the GPU tests of the channels-last ops and of cuDNN ==
# im2col (U-Net, Topaz's UDenoiseNet), the K2 protocol with the recipe (240 s of training),
# the U-Net and UDenoiseNet rows of bench_gpu.py against PyTorch, and Topaz's pretrained
# unet in cupyden against Topaz 0.3.20 itself. Each stage has its own time limit and the
# next runs whatever the last gave; logs go to $LOGS (default gpu-issue15). The limits
# are generous (all four stages: about 15 minutes at most); a first run on 2026-11-30 with
# limits of 90/300/100/40 s was cut in every stage: the GPU tests need about 3 minutes,
# the protocol about 5 (store, 240 s of training, denoising, baselines).
#
#   source .device/gpu-env.sh; bash benchmarks/gpu_issue15.sh .k2/K2.mrc
#
# Arguments: the K2 micrograph (3838 x 3710). Environment: LOGS (folder), STAGES (which
# of: tests k2 bench topaz; default all), K2_RECIPE (default topaz-finetune), K2_EXTRA
# (more cupyden-train options for the K2 stage, e.g. "--ema 0.999"), K2_MINUTES
# (the training budget, default 4). Run it with nothing else on the host: the small
# training steps of bench_gpu are bound by the host's kernel launches, and a job on another
# GPU of the same host made two rows 1.5-4x slower (benchmarks/RESULTS.md, session 10).
K2=${1:-.k2/K2.mrc}
LOGS=${LOGS:-gpu-issue15}
STAGES=${STAGES:-"tests k2 bench topaz"}
mkdir -p "$LOGS"

stage() {            # stage NAME SECONDS COMMAND...: run it under a time limit, log it
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    local t0=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - t0)) s (limit $limit)"
    tail -n 25 "$LOGS/$name.log"
}

stage tests 400 python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_channels_last.py tests/test_cudnn.py
stage k2 480 python3 benchmarks/k2_protocol.py "$K2" --recipe "${K2_RECIPE:-topaz-finetune}" \
    --minutes "${K2_MINUTES:-4}" --tta 8 --pretrained none -o /tmp/k2-protocol \
    --extra "${K2_EXTRA:-}" \
    --panel "$LOGS/k2_protocol_before_after.png"
cp /tmp/k2-protocol/k2_protocol.json /tmp/k2-protocol/history.csv "$LOGS/" 2>/dev/null
# every row in one run (the issue asks for one); the first process on a machine tunes each
# float32 shape twice (fused and split routes), so give it time (session 9: > 330 s)
stage bench 600 python3 benchmarks/bench_gpu.py --repeats 6 --modes tf32,fp16 \
    --markdown "$LOGS/bench.md"
stage topaz 150 python3 benchmarks/topaz_equivalence.py --only 4k --repeats 2
