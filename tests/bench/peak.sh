#!/bin/sh
# tests/bench/peak.sh [BUILD] — the fp32 and bf16 arithmetic peaks of this CPU for moka's GEMM
# micro-kernels' instruction mix (tests/bench/peak.c): one thread, then OMP_NUM_THREADS (default:
# every CPU). A benchmark, not a test; about 10 s. The binary goes to $BUILD/bench/peak.
set -eu
BUILD=${1:-${BUILD:-build}}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$BUILD/bench"
${CC:-cc} -O2 -fopenmp "$HERE/peak.c" -o "$BUILD/bench/peak"
echo "== peak GFLOP/s, $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs ($(date -u +%Y-%m-%dT%H:%MZ))"
"$BUILD/bench/peak"
