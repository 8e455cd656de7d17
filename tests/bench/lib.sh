# tests/bench/lib.sh — what forward.sh and train.sh share (sourced, not run).
#
# Peers, all on this machine in the same run:
#   moka     $BUILD/moka time (Caffe's `caffe time` lines)
#   Caffe    /work/shared/tools/caffe-peer (Debian bullseye's Caffe 1.0 in a chroot, root only)
#   PyTorch  Debian's python3-torch, run with /usr/bin/python3 (apt-get install -y python3-torch)
# BLAS kernels: every comparison runs twice, once with OPENBLAS_CORETYPE as the environment
# sets it and once with it unset (OpenBLAS picks the kernel itself), for moka and PyTorch. Caffe's
# chroot has OpenBLAS 0.3.13, which takes its kernel from CAFFE_PEER_CORETYPE: the same name as
# the environment's in the first run; in the second, SkylakeX (0.3.13 does not recognise this CPU
# and maps "Cooperlake", the name 0.3.21 picks here, to the SSE3 Prescott kernel; Cooperlake's
# sgemm is SkylakeX's).
# Peak RSS: GNU time's maximum resident set size of the process tree (caffe-peer: the caffe or
# python process inside the chroot).

BUILD=${BUILD:-build}
M=$(cd "$(dirname "$BUILD/moka")" && pwd)/moka
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEER=${CAFFE_PEER:-/work/shared/tools/caffe-peer}
PY=/usr/bin/python3
DEPLOY=$REPO/data/ResNet-50-deploy.prototxt

die() { echo "bench: $*" >&2; exit 1; }

bench_check() {
  [ -x "$M" ] || die "no $M: build it first (make BUILD=$BUILD)"
  [ "$(id -u)" = 0 ] || die "caffe-peer needs root"
  [ -x "$PEER" ] || die "no caffe-peer at $PEER"
  "$PEER" setup >/dev/null || die "caffe-peer setup failed"
  $PY -c 'import torch' 2>/dev/null || die "PyTorch missing: apt-get install -y python3-torch"
  [ -x /usr/bin/time ] || die "GNU time missing: apt-get install -y time"
}

# The coretype modes to run: "env" (as the environment sets it) and "unset".
bench_modes() {
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then echo "env unset"; else echo "unset"; fi
}

# envp MODE: a command prefix that sets OPENBLAS_CORETYPE as the mode says (use unquoted:
# $(envp unset) CMD...; it execs CMD, so GNU time still measures CMD itself).
envp() {
  if [ "$1" = unset ]; then echo "env -u OPENBLAS_CORETYPE"; else echo env; fi
}

# caffe_core MODE: the kernel name given to Caffe's OpenBLAS.
caffe_core() {
  if [ "$1" = unset ]; then echo SkylakeX; else echo "$OPENBLAS_CORETYPE"; fi
}

mode_title() {
  if [ "$1" = unset ]; then echo "OPENBLAS_CORETYPE unset (OpenBLAS chooses)";
  else echo "OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE (as the environment sets it)"; fi
}

# CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal), in ticks.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# wait_quiet: before a measurement, wait (up to QUIET_WAIT seconds, default 180) until the
# machine is idle, i.e. less than 15% of its CPUs busy over 2 s, so that other work (builds and
# tests of other sessions) does not skew the figure. Says so on stderr when it gives up.
wait_quiet() {
  start=$(date +%s)
  while :; do
    a=$(busy_ticks); sleep 2; z=$(busy_ticks)
    pct=$(awk -v a="$a" -v z="$z" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
      'BEGIN{printf "%d", (z - a) / hz / (2 * n) * 100}')
    [ "$pct" -lt 15 ] && return 0
    if [ $(( $(date +%s) - start )) -ge "${QUIET_WAIT:-180}" ]; then
      echo "bench: the machine is still ${pct}% busy after ${QUIET_WAIT:-180} s; measuring anyway" >&2
      return 0
    fi
  done
}

# timed FILE CMD...: run CMD under GNU time. FILE gets "maxRSS_KiB wall_s user_s sys_s" and
# a second line with the machine's busy ticks before and after, so that other_load can tell
# how much of the machine something else used meanwhile (other sessions' builds and tests, the
# host). When that is 15% or more, CMD runs again (up to MAX_TRIES times, default 3); its output
# then holds every try, the last one last (the figures are read from the end).
timed() {
  f=$1; shift
  try=1
  while :; do
    wait_quiet
    t0=$(busy_ticks)
    /usr/bin/time -f "%M %e %U %S" -o "$f" "$@"; rc=$?
    echo "$t0 $(busy_ticks)" >>"$f"
    [ $rc -eq 0 ] || return $rc
    o=$(other_load "$f" | tr -d %)
    if [ "$o" -lt 15 ] || [ $try -ge "${MAX_TRIES:-3}" ]; then return 0; fi
    echo "bench: other processes used ${o}% of the CPUs during that measurement; measuring again" >&2
    try=$((try + 1))
  done
}

# best_run N KEY LOG CMD...: CMD (its stderr to LOG.rI, GNU time's figures to LOG.rI.rss, via
# timed) N times; the run with the lowest KEY (an avg_ms line: "Average Forward-Backward", ...)
# is kept as LOG and LOG.rss. moka and Caffe get the best of RUNS runs as PyTorch does (its
# script keeps its best of RUNS itself), so no engine is favoured by the machine's noise.
best_run() {
  _br_n=$1 _br_key=$2 _br_log=$3
  shift 3
  _br_best="" _br_i=1
  while [ "$_br_i" -le "$_br_n" ]; do
    if ! timed "$_br_log.r$_br_i.rss" "$@" >/dev/null 2>"$_br_log.r$_br_i"; then
      cp "$_br_log.r$_br_i" "$_br_log"
      return 1
    fi
    _br_v=$(avg_ms "$_br_log.r$_br_i" "$_br_key")
    if [ -z "$_br_best" ] || awk -v a="$_br_v" -v b="$_br_best" 'BEGIN { exit !(a + 0 < b + 0) }'; then
      _br_best=$_br_v
      cp "$_br_log.r$_br_i" "$_br_log"
      cp "$_br_log.r$_br_i.rss" "$_br_log.rss"
    fi
    _br_i=$((_br_i + 1))
  done
}

# peak RSS in MiB from a timed file
rss_mib() { awk 'NR == 1 {printf "%.0f", $1 / 1024}' "$1"; }

# Share of the machine's CPUs busy with something other than the measured command while it
# ran (percent). A few percent is the kernel and the shell; tens of percent mean the figure
# is skewed by other work: rerun when the machine is quiet.
other_load() {
  awk -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" '
    NR == 1 {w = $2; own = $3 + $4}
    NR == 2 {busy = ($2 - $1) / hz}
    END {o = w > 0 ? (busy - own) / (w * n) * 100 : 0; if (o < 0) o = 0; printf "%.0f%%", o}' "$1"
}

# "Average Forward pass: X ms." (and friends) from a moka/caffe time log
avg_ms() { sed -n "s/.*] $2: \([0-9.e+-]*\) ms\.\$/\1/p" "$1" | tail -1; }
# key=value from a "result ..." line
result_val() { sed -n "s/^result.* $2=\([0-9.e+-]*\).*/\1/p" "$1" | tail -1; }

# Kernels in use, one line per engine (MODE).
kernels() {
  mode=$1
  echo "  moka:    $($(envp "$mode") "$M" device_query | sed -n 's/^ *OpenBLAS: //p')"
  (cd "$WORK" && CAFFE_PEER_CORETYPE=$(caffe_core "$mode") "$PEER" python3 pycaffe_forward.py info \
     2>/dev/null | sed -n 's/^blas: /  Caffe:   /p')
  echo "  PyTorch: $($(envp "$mode") $PY "$HERE/torch_resnet50.py" info)"
}

# PyTorch's convolution kernels (oneDNN, whatever OPENBLAS_CORETYPE says).
torch_conv_kernels() {
  DNNL_VERBOSE=1 $PY "$HERE/torch_resnet50.py" "$1" 1 1 1 nchw 2>/dev/null |
    awk -F, '/onednn_verbose,info,cpu,isa:/ && !isa {isa=$0; sub(/.*isa:/, "", isa)}
             /onednn_verbose,exec,cpu,convolution,/ {n[$5]++}
             END {printf "  PyTorch convolutions (%s): oneDNN, CPU ISA \"%s\";", mode, isa;
                  for (k in n) printf " %s x%d", k, n[k]; print ""}' mode="$1" 2>/dev/null ||
    echo "  PyTorch convolutions: (DNNL_VERBOSE gave nothing)"
}

# ratio A B -> A/B with 2 decimals ("-" when missing)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
img_s() { awk -v b="$1" -v ms="$2" 'BEGIN{ if (ms == "" || ms == 0) print ""; else printf "%.2f", b * 1000 / ms }'; }

# ms with one decimal ("-" when missing)
ms1() { awk -v v="$1" 'BEGIN{ if (v == "") print "-"; else printf "%.1f", v }'; }

row() { printf '  %-34s %5s %10s %8s %9s %7s\n' "$@"; }
