#!/bin/sh
# tests/gpu/run.sh — the ONE device check (`make gpu-check`): build with CUDA for this GPU, run
# every CUDA kernel against the CPU reference and the whole nets against real Caffe, train on
# the device (the solver against Caffe's golden runs, snapshot -> resume, `moka train --gpu=0`
# and `solver_mode: GPU`), run compute-sanitizer on a short training run, then benchmark
# ResNet-50 training (moka's kernels, the cuDNN engine, PyTorch fp32 and bf16 AMP) and write
# the figures.
#
# Before: on the build machine, `sh tests/gpu/prepare.sh` (build dependencies as .deb files,
# generated protobuf sources, golden files, all in .gpu/, which the device call must carry).
# Needs no network. Every step has a hard time limit (timeout) and a failing step does not
# stop the others. About 7-8 minutes on an H100 (estimated: the bf16 steps have not run yet).
#
# Output: $OUT (default $BUILD/gpu-out), at most 8 files:
#   summary.txt      the figures: tests, sanitizer, img/s, peak memory, ratios, per-conv-layer
#                    moka vs cuDNN
#   run.log          what ran, each step's exit status and duration
#   build.log, test.log (test_cuda_layers, test_cuda_solver, the moka train runs),
#   sanitizer.log, moka_time.log (every `moka time` run, per-layer lines included), torch.log,
#   igemm_bench.log (per-layer convolution benchmark: moka bf16/fp32 vs cuDNN bf16/fp32)
# Exit status: 0 when the build, the GPU tests and the sanitizer passed (benchmarks never fail
# the check: slow figures are reported, not hidden).
#
# Environment: BUILD (build-gpu), OUT, BATCHES ("64 128 256"), BF16_BATCH (128: the batch also
# timed with --precision=bf16), ITERS (10), TORCH_FP32_CL (set: PyTorch fp32 channels_last too),
# CUDA_ARCH (detected from
# nvidia-smi, else sm_90), MOKA_SHARED (.gpu/shared, else ../shared), GPU_CHECK_BUDGET (540:
# seconds for the whole script; each step's limit is cut to what is left, and steps that no
# longer fit are skipped, so that the summary is always written inside a 10-minute device call).
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
BUILD=${BUILD:-build-gpu}
OUT=${OUT:-$BUILD/gpu-out}
W=$BUILD/gpu-work
BATCHES=${BATCHES:-"64 128 256"}
ITERS=${ITERS:-10}
mkdir -p "$OUT" "$W"
rm -f "$W"/*.log "$W"/gpu.txt
export NVIDIA_TF32_OVERRIDE=0   # fp32 means fp32, in every library
if [ -z "${MOKA_SHARED:-}" ]; then
  if [ -d .gpu/shared/golden ]; then MOKA_SHARED=$REPO/.gpu/shared; else MOKA_SHARED=$REPO/../shared; fi
fi
export MOKA_SHARED
LOG=$W/run.log
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
T_START=$(date +%s)
DEADLINE=$((T_START + ${GPU_CHECK_BUDGET:-540}))

# step NAME LIMIT LOGFILE CMD...: run CMD with a hard limit, output appended to LOGFILE.
step() {
  name=$1 limit=$2 logf=$3
  shift 3
  s=$(date +%s)
  left=$((DEADLINE - s - 15)) # keep 15 s for the summary
  if [ $left -lt 10 ]; then
    say "$(printf '%-40s %s' "$name" "SKIPPED: the time budget is spent")"
    return 125
  fi
  [ $left -lt "$limit" ] && limit=$left
  echo "== $name: $*" >>"$logf"
  timeout -k 10 "$limit" "$@" >>"$logf" 2>&1
  rc=$?
  msg="rc=$rc"
  [ $rc = 124 ] || [ $rc = 137 ] && msg="TIMED OUT after ${limit}s"
  say "$(printf '%-40s %s, %ds' "$name" "$msg" $(($(date +%s) - s)))"
  return $rc
}

# ---- 0. the machine ---------------------------------------------------------------------------
{
  # MOKA_COMMIT: the commit as the caller names it (the device's copy of the tree may carry
  # an older .git than the files it runs)
  echo "GPU check of ${MOKA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')} on $(hostname), $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 |
    sed 's/^/GPU: /'
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  python3 -c 'import torch; print("PyTorch %s (CUDA %s, cuDNN %s)" % (torch.__version__, torch.version.cuda, torch.backends.cudnn.version()))' 2>&1 | tail -1
} >"$W/gpu.txt"
cat "$W/gpu.txt"

if [ -z "${CUDA_ARCH:-}" ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  case "$cc" in [0-9][0-9]|[0-9][0-9][0-9]) ;; *) cc=90 ;; esac
  CUDA_ARCH="-gencode arch=compute_$cc,code=sm_$cc"
fi
say "CUDA_ARCH=$CUDA_ARCH"

# ---- 1. build dependencies (unpacked from .gpu/debs when the machine lacks them) ---------------
XCFLAGS="" XLDFLAGS=""
have_deps() {
  for h in /usr/include/protobuf-c/protobuf-c.h /usr/include/lmdb.h /usr/include/turbojpeg.h \
           /usr/include/png.h; do
    [ -f "$h" ] || return 1
  done
  for h in /usr/include/cblas.h /usr/include/*/cblas.h /usr/include/openblas/cblas.h; do
    [ -f "$h" ] && return 0
  done
  return 1
}
# MOKA_GPU_FORCE_DEBS=1: use .gpu/debs even where the system has the headers (to test this path)
if ! have_deps || [ "${MOKA_GPU_FORCE_DEBS:-0}" = 1 ]; then
  if ls .gpu/debs/*.deb >/dev/null 2>&1; then
    P=/tmp/moka-deps
    rm -rf "$P" && mkdir -p "$P"
    for d in .gpu/debs/*.deb; do
      if command -v dpkg-deb >/dev/null 2>&1; then dpkg-deb -x "$d" "$P"
      else (t=$(mktemp -d) && cd "$t" && ar x "$REPO/$d" && tar -xf data.tar.* -C "$P" && rm -rf "$t"); fi
    done
    A=$P/usr/lib/x86_64-linux-gnu
    XCFLAGS="-I$P/usr/include -I$P/usr/include/x86_64-linux-gnu -I$P/usr/include/x86_64-linux-gnu/openblas-pthread"
    XLDFLAGS="-L$A -L$A/openblas-pthread -Wl,-rpath,$A -Wl,-rpath,$A/openblas-pthread"
    export LD_LIBRARY_PATH="$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "build dependencies: unpacked $(ls .gpu/debs/*.deb | wc -l) packages from .gpu/debs into $P"
  else
    say "build dependencies: MISSING here and no .gpu/debs (run tests/gpu/prepare.sh on the build machine and carry .gpu)"
  fi
fi
# cuDNN and cuBLAS: from the CUDA toolkit, else from PyTorch's pip packages (nvidia.cudnn,
# nvidia.cublas: headers in include/, only versioned .so files in lib/, so a link folder gives
# the linker its libNAME.so).
XNVCC=""
NVCC_BIN=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
CUDA_HOME=$(dirname "$(dirname "$NVCC_BIN")")
LINKS=/tmp/moka-cuda-links
use_pip_lib() { # module header lib...
  mod=$1 hdr=$2
  shift 2
  [ -f "$CUDA_HOME/include/$hdr" ] && [ -e "$CUDA_HOME/lib64/$1.so" ] && return 0
  d=$(python3 -c "import nvidia.$mod as m; print(list(m.__path__)[0])" 2>/dev/null)
  if [ -z "$d" ] || [ ! -f "$d/include/$hdr" ]; then
    say "$hdr: not in $CUDA_HOME and no python nvidia.$mod package: the build will fail"
    return 1
  fi
  mkdir -p "$LINKS"
  for lib in "$@"; do
    for so in "$d"/lib/"$lib".so.*; do [ -e "$so" ] && ln -sf "$so" "$LINKS/$lib.so" && break; done
  done
  XCFLAGS="$XCFLAGS -I$d/include"
  XNVCC="$XNVCC -I$d/include"
  XLDFLAGS="$XLDFLAGS -L$LINKS -Wl,-rpath,$d/lib"
  export LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "$hdr: from PyTorch's package nvidia.$mod ($d)"
}
use_pip_lib cudnn cudnn.h libcudnn
use_pip_lib cublas cublas_v2.h libcublas libcublasLt
if ! command -v protoc-c >/dev/null 2>&1 && [ -f .gpu/proto/caffe.pb-c.c ]; then
  mkdir -p "$BUILD/proto"
  cp .gpu/proto/caffe.pb-c.c .gpu/proto/caffe.pb-c.h "$BUILD/proto/"
  touch "$BUILD/proto/caffe.pb-c.c" "$BUILD/proto/caffe.pb-c.h"   # newer than proto/caffe.proto
  say "protoc-c: absent; using the generated sources from .gpu/proto"
fi

# ---- 2. build -----------------------------------------------------------------------------------
NJ=$(nproc 2>/dev/null || echo 8)
BUILD_OK=0
step "build (CUDA=1)" 420 "$W/build.log" make -j"$NJ" --no-print-directory BUILD="$BUILD" CUDA=1 \
  CUDA_ARCH="$CUDA_ARCH" EXTRA_CFLAGS="$XCFLAGS" EXTRA_LDFLAGS="$XLDFLAGS" EXTRA_NVCCFLAGS="$XNVCC" \
  "$BUILD/moka" "$BUILD/tests/test_cuda_layers" "$BUILD/tests/test_cuda_solver" \
  "$BUILD/tests/test_cuda_transform" "$BUILD/tests/test_cuda_igemm" \
  "$BUILD/tests/test_cuda_fused" "$BUILD/tests/test_cuda_faults" \
  "$BUILD/tests/test_cuda_bn_nhwc" && BUILD_OK=1
M=$BUILD/moka

# ---- 3. GPU tests (kernels vs CPU reference, whole nets vs Caffe) -------------------------------
TEST_OK=0
if [ $BUILD_OK = 1 ]; then
  t1=0 t2=0 t3=0
  step "test_cuda_layers" 240 "$W/test.log" "$BUILD/tests/test_cuda_layers" && t1=1
  # training on the device: golden mini_train runs, resume, update rules, test nets
  step "test_cuda_solver" 120 "$W/test.log" "$BUILD/tests/test_cuda_solver" && t2=1
  # the CLI: mini_train with --gpu=0, and with solver_mode: GPU (device_id 0) and no --gpu
  step "moka train --gpu=0, solver_mode GPU" 90 "$W/test.log" \
    sh tests/gpu/train_cli.sh "$M" "$MOKA_SHARED" "$W" && t3=1
  # data transforms on the device (kernel vs oracle, Data/ImageData vs the CPU layer, timing)
  t4=0
  step "test_cuda_transform" 90 "$W/test.log" "$BUILD/tests/test_cuda_transform" && t4=1
  # bf16/TF32 implicit-GEMM convolution, cuDNN bf16, bf16/TF32 GEMM vs the host (issue 7)
  t5=0
  step "test_cuda_igemm" 90 "$W/test.log" "$BUILD/tests/test_cuda_igemm" && t5=1
  # fused BatchNorm->Scale(->Eltwise)(->ReLU) op vs the reference layers; the memory plan
  t6=0
  step "test_cuda_fused" 90 "$W/test.log" "$BUILD/tests/test_cuda_fused" && t6=1
  # the same with the chains' scalar kernels (the vector path off)
  step "test_cuda_fused MOKA_BNF_VEC=0" 90 "$W/test.log" env MOKA_BNF_VEC=0 \
    "$BUILD/tests/test_cuda_fused" || t6=0
  # numerical faults on the device: NaN/inf stops naming the layer, debug_info lines
  t7=0
  step "test_cuda_faults" 60 "$W/test.log" "$BUILD/tests/test_cuda_faults" && t7=1
  # the chain on channels-last bf16 (bn_nhwc.cu, what MOKA_BF16_ACT=1 runs) vs the fp32 chain
  t8=0
  step "test_cuda_bn_nhwc" 60 "$W/test.log" "$BUILD/tests/test_cuda_bn_nhwc" && t8=1
  [ $t1 = 1 ] && [ $t2 = 1 ] && [ $t3 = 1 ] && [ $t4 = 1 ] && [ $t5 = 1 ] && [ $t6 = 1 ] &&
    [ $t7 = 1 ] && [ $t8 = 1 ] && TEST_OK=1
  grep -q '^SKIP' "$W/test.log" 2>/dev/null && TEST_OK=0 && say "GPU tests SKIPPED: $(grep '^SKIP' "$W/test.log" | head -2)"
fi

# ---- 4. compute-sanitizer on a short training run (mini_train: forward + backward) -------------
SAN_OK=0
if [ $BUILD_OK = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  step "compute-sanitizer memcheck" 180 "$W/sanitizer.log" compute-sanitizer --tool memcheck \
    --print-limit 50 --error-exitcode 99 "$M" time --model="$MOKA_SHARED/golden/mini_train/train.prototxt" \
    --gpu=0 --iterations=2 && SAN_OK=1
elif [ $BUILD_OK = 1 ]; then
  say "compute-sanitizer: not found on this machine"
fi
# the tensor-core convolution kernels (first run unobserved): memcheck on the small igemm shapes
if [ $BUILD_OK = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  step "compute-sanitizer memcheck igemm" 60 "$W/sanitizer.log" compute-sanitizer --tool memcheck \
    --print-limit 50 --error-exitcode 99 "$BUILD/tests/test_cuda_igemm" quick || SAN_OK=0
  # the NHWC kernel's cp.async pipeline (new, first run unobserved): shared-memory races.
  # Reported in the summary, not folded into the check's verdict until a first run shows
  # racecheck's view of cp.async pipelines is free of false alarms.
  step "compute-sanitizer racecheck nhwc" 90 "$W/sanitizer.log" compute-sanitizer --tool racecheck \
    --print-limit 50 --error-exitcode 99 "$BUILD/tests/test_cuda_igemm" nhwc ||
    say "racecheck: hazards or a failure (see sanitizer.log)"
fi

# ---- 4b. per-layer convolution benchmark: each distinct ResNet-50 shape, batch 64, forward and
# backward of moka bf16 (implicit GEMM), cuDNN bf16, moka fp32, cuDNN fp32 ----------------------
if [ $BUILD_OK = 1 ]; then
  step "igemm per-layer benchmark b64" 75 "$W/igemm_bench.log" "$BUILD/tests/test_cuda_igemm" \
    bench 64 3
fi

# ---- 4c. ResNet-50's 53 BatchNorm chains at batch 64: fp32 NCHW (as the nets run them) against
# channels-last bf16 (bn_nhwc.cu: what the bf16 plan of docs/cuda.md would save there) ------------
if [ $BUILD_OK = 1 ]; then
  step "chain benchmark b64 (fp32 NCHW vs bf16 NHWC)" 60 "$W/chain_bench.log" \
    "$BUILD/tests/test_cuda_bn_nhwc" bench 64
fi

# ---- 5. benchmark, batch by batch: moka time (ResNet-50 v1 training, both convolution engines),
# then PyTorch on the same GPU (fp32 with TF32 off, NCHW and channels_last; bf16 AMP) ------------
for b in $BATCHES; do
  python3 tests/gpu/gen_train_input.py data/ResNet-50-deploy.prototxt "$b" "$W/r50_train_b$b.prototxt" ||
    say "gen_train_input.py failed for batch $b"
  [ $BUILD_OK = 1 ] || continue
  for eng in moka cudnn auto; do
    step "moka time b$b engine=$eng" 180 "$W/moka_${eng}_b$b.log" \
      env MOKA_CONV_ENGINE=$eng "$M" time --model="$W/r50_train_b$b.prototxt" --gpu=0 \
      --iterations="$ITERS"
  done
  # --precision=bf16 (moka's implicit-GEMM kernels, then cuDNN bf16), the largest batch only
  if [ "$b" = "${BF16_BATCH:-128}" ]; then
    for eng in moka cudnn auto; do
      step "moka time b$b engine=$eng bf16" 180 "$W/moka_${eng}bf16_b$b.log" \
        env MOKA_CONV_ENGINE=$eng "$M" time --model="$W/r50_train_b$b.prototxt" --gpu=0 \
        --iterations="$ITERS" --precision=bf16
    done
    # moka's engine with the NHWC bf16 kernel (conv_nhwc.cu, opt-in) where it applies, alone
    # and against cuDNN per layer (auto)
    step "moka time b$b engine=moka bf16 MOKA_CONV_NHWC=1" 180 "$W/moka_nhwcbf16_b$b.log" \
      env MOKA_CONV_NHWC=1 MOKA_CONV_ENGINE=moka "$M" time --model="$W/r50_train_b$b.prototxt" \
      --gpu=0 --iterations="$ITERS" --precision=bf16
    step "moka time b$b engine=auto bf16 MOKA_CONV_NHWC=1" 180 "$W/moka_autonhwcbf16_b$b.log" \
      env MOKA_CONV_NHWC=1 MOKA_CONV_ENGINE=auto "$M" time --model="$W/r50_train_b$b.prototxt" \
      --gpu=0 --iterations="$ITERS" --precision=bf16
    # activations as bf16 channels-last between layers (MOKA_BF16_ACT=1, src/net_bf16.h)
    step "moka time b$b engine=moka bf16 MOKA_BF16_ACT=1" 180 "$W/moka_bf16actbf16_b$b.log" \
      env MOKA_BF16_ACT=1 MOKA_CONV_NHWC=1 MOKA_CONV_ENGINE=moka "$M" time \
      --model="$W/r50_train_b$b.prototxt" --gpu=0 --iterations="$ITERS" --precision=bf16
  fi
  # (fp32 channels_last measured the same as NCHW on the H200, 2026-11-28: TORCH_FP32_CL=1 adds it)
  step "PyTorch ResNet-50 b$b" 180 "$W/torch.log" python3 tests/gpu/torch_bench.py "$ITERS" \
    "$b:fp32:nchw" ${TORCH_FP32_CL:+"$b:fp32:channels_last"} "$b:bf16:channels_last"
done

# ---- 5b. A/B of the fused BatchNorm chains and the memory plan (both on above): the first batch
# with both off (summary row "unfused": img/s and peak MiB beside the "moka" row) -----------------
b0=${BATCHES%% *}
if [ $BUILD_OK = 1 ] && [ -f "$W/r50_train_b$b0.prototxt" ]; then
  step "moka time b$b0 MOKA_FUSE=0 MOKA_CUDA_MEMPLAN=0" 120 "$W/moka_unfused_b$b0.log" \
    env MOKA_FUSE=0 MOKA_CUDA_MEMPLAN=0 "$M" time --model="$W/r50_train_b$b0.prototxt" --gpu=0 \
    --iterations="$ITERS"
fi

# ---- 5c. A/B of the switches, one at a time, the first batch: Winograd off, the Splits' shared
# device data off, the chains summing the Splits after them off, the Winograd weight gradient
# on, Winograd F(4x4) on, the split weight-gradient GEMM on (and with AB_MORE: the chains' vector kernels off,
# cuDNN's timed algorithm choice off) -----------------------------------------------------------
if [ $BUILD_OK = 1 ] && [ -f "$W/r50_train_b$b0.prototxt" ]; then
  # (MOKA_BNF_VEC=0 and MOKA_CUDNN_FIND=0 were measured on 2026-11-28: AB_MORE=1 adds them)
  for ab in "nowino MOKA_CONV_WINOGRAD=0 moka" "noshare MOKA_CUDA_SPLIT_SHARE=0 moka" \
            "nosplitbw MOKA_FUSE_SPLIT=0 moka" "winowgrad MOKA_CONV_WINOGRAD_WGRAD=1 moka" \
            "wino4 MOKA_CONV_WINOGRAD=4 moka" \
            "split MOKA_CONV_WGRAD_SPLIT=1 moka" \
            ${AB_MORE:+"novec MOKA_BNF_VEC=0 moka" "cudnnnofind MOKA_CUDNN_FIND=0 cudnn"}; do
    set -- $ab
    step "moka time b$b0 $2 (engine $3)" 60 "$W/moka_$1_b$b0.log" \
      env "$2" MOKA_CONV_ENGINE="$3" "$M" time --model="$W/r50_train_b$b0.prototxt" --gpu=0 \
      --iterations="$ITERS"
  done
fi

# ---- 6. summary ---------------------------------------------------------------------------------
say "total $(($(date +%s) - T_START))s"
python3 tests/gpu/summarize.py "$W" >"$OUT/summary.txt" 2>&1 || echo "summarize.py failed" >>"$OUT/summary.txt"
{
  echo
  echo "Steps:"
  cat "$LOG"
} >>"$OUT/summary.txt"
cp "$LOG" "$OUT/run.log"
for f in build test sanitizer torch igemm_bench chain_bench; do [ -f "$W/$f.log" ] && cp "$W/$f.log" "$OUT/$f.log"; done
: >"$OUT/moka_time.log"
for f in "$W"/moka_*_b*.log; do
  [ -f "$f" ] || continue
  echo "######## $(basename "$f")" >>"$OUT/moka_time.log"
  cat "$f" >>"$OUT/moka_time.log"
done
cat "$OUT/summary.txt"
[ $BUILD_OK = 1 ] && [ $TEST_OK = 1 ] && { [ $SAN_OK = 1 ] || ! command -v compute-sanitizer >/dev/null 2>&1; }
