#!/bin/bash
# Issue 19, round 3 (which round is the result; SNR 0.02 and 0.01) on one H200, from the
# repository root:   bash benchmarks/gpu_issue19.sh      (about 3-4 minutes)
# 1. the GPU tests of alignment and clustering (CuPy == NumPy paths, the silhouette score);
# 2. cluster_snr.py: the rotated benchmark at SNR 0.2 .. 0.01 (5 x 100 particles, 3 rounds
#    x 200 steps) and, in the same table, the old benchmark (views without in-plane
#    rotation) at SNR 0.5, where the chosen round must be round 0 with purity >= 0.95.
set -u
echo "== 1. GPU tests"
python3 -m pytest -q tests/test_align.py tests/test_cluster.py -k cupy

echo "== 2. cluster_snr.py"
python3 benchmarks/cluster_snr.py --device 0 --pdb cupyden/data/groel_1mnf.pdb.gz \
    --snrs 0.2,0.1,0.05,0.02,0.01 --per-class 100 --steps 200 --unrotated 0.5
