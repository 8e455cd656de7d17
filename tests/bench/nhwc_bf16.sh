#!/bin/sh
# tests/bench/nhwc_bf16.sh [BUILD] — the channels-last bf16 convolution kernels
# (src/layers/conv_nhwc_bf16.c, timed by tests/bench/nhwc_bf16.c on bf16 channels-last inputs)
# beside the NCHW bf16 layers (MOKA_BF16_ACT=0: fp32 NCHW activations, operands packed
# to bf16 per call: `moka time --precision=bf16` on ResNet-50 train_val at BATCH, default 8),
# summed over ResNet-50's 36 1x1 and 16 3x3 convolutions, forward and backward, in one run on this machine
# (RUNS rounds, default 2, alternating). A benchmark, not a test: it prints and never fails on a
# slow figure. What it answers: how much of the convolutions' time a bf16 channels-last training
# path would save (docs/performance.md, "bf16 channels-last on the CPU"). The kernels' figures
# leave out what such a path would add around them (the stride-2 layers' subsampling, the
# chains writing bf16); moka's include everything its layers do.
set -eu
BUILD=${1:-${BUILD:-build}}
. "$(dirname "$0")/lib.sh"
BATCH=${BATCH:-8}
RUNS=${RUNS:-2}
[ -x "$M" ] || die "no $M: build it first (make BUILD=$BUILD)"
make --no-print-directory -C "$REPO" BUILD="$BUILD" "$BUILD/bench/nhwc_bf16" >/dev/null ||
  die "could not build $BUILD/bench/nhwc_bf16"
WORK=$(mkdir -p "$BUILD/bench/nhwc" && cd "$BUILD/bench/nhwc" && pwd)
$PY "$HERE/gen_prototxt.py" train "$DEPLOY" "$BATCH" "$WORK/train.prototxt"

echo "== bf16 convolutions: channels-last kernels vs moka's layers, ResNet-50 batch $BATCH" \
  "($(date -u +%Y-%m-%dT%H:%MZ))"
echo "   CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
  "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}; commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
r=1
while [ "$r" -le "$RUNS" ]; do
  wait_quiet
  MOKA_BF16_ACT=0 "$M" time --model="$WORK/train.prototxt" --precision=bf16 --iterations=3 \
    >"$WORK/moka.$r.log" 2>&1 ||
    die "moka time failed: $(tail -2 "$WORK/moka.$r.log")"
  "$BUILD/bench/nhwc_bf16" "$BATCH" >"$WORK/nhwc.$r.txt" || die "nhwc_bf16 failed"
  r=$((r + 1))
done
echo "-- the kernels (last run):"
cat "$WORK/nhwc.$RUNS.txt"
wait_quiet
NHWC_BENCH_COLD=1 "$BUILD/bench/nhwc_bf16" "$BATCH" >"$WORK/nhwc.cold.txt" || die "nhwc_bf16 failed"
echo "-- the kernels with their operands from memory (NHWC_BENCH_COLD=1: 96 MiB written before each call):"
grep "^   all " "$WORK/nhwc.cold.txt"
$PY - "$WORK" "$RUNS" <<'EOF'
import re, sys
work, runs = sys.argv[1], int(sys.argv[2])
kinds = {"1x1": re.compile(r"^res\d[a-f]_branch(2a|2c|1)$"), "3x3": re.compile(r"^res\d[a-f]_branch2b$")}
pat = re.compile(r"\]\s*(\S+)\s+(forward|backward): ([0-9.eE+-]+) ms\.$")
print("-- per run: ms per step (forward / backward)")
for r in range(1, runs + 1):
    k = open(f"{work}/nhwc.{r}.txt").read()
    for kind, names in kinds.items():
        f = b = 0.0
        n = set()
        on = False
        for line in open(f"{work}/moka.{r}.log", errors="replace"):
            if "*** Benchmark begins ***" in line:
                on = True
            m = pat.search(line)
            if on and m and names.match(m.group(1)):
                n.add(m.group(1))
                if m.group(2) == "forward":
                    f += float(m.group(3))
                else:
                    b += float(m.group(3))
        m = re.search(kind + r" layers: forward ([0-9.]+) ms, data gradient ([0-9.]+), weight gradient ([0-9.]+)", k)
        kf, kd, kw = (float(x) for x in m.groups())
        print(f"   run {r}, {len(n)} {kind} layers: moka's {f:7.2f} / {b:7.2f}   channels-last kernels "
              f"{kf:7.2f} / {kd + kw:7.2f}   ratio {f / kf:4.2f} / {b / (kd + kw):4.2f}")
EOF
