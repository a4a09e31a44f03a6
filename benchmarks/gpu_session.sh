#!/usr/bin/env bash
# A GPU session in short calls, on a machine with torch, triton and nvcc (no network): build the
# CUDA extension, run the GPU tests, run the benchmarks. Name one or more stages; they run in
# order until BUDGET seconds (default 540) are spent, each command under a timeout of what is
# left, so the packing at the end always runs inside a 10-minute call.
#
#   bash benchmarks/gpu_session.sh build           # pre-flight, build, `mage-fast info`, the compile report's
#                                                  # checks (spills, launchability), every benchmark --smoke
#   bash benchmarks/gpu_session.sh test-attention  # tests marked gpu: attention (warms Triton's cache for the next)
#   bash benchmarks/gpu_session.sh test-kernels    # tests marked gpu: token drop, vq, decoding step, backends
#   bash benchmarks/gpu_session.sh test-models     # the other tests marked gpu: model, training, sampler, ...
#   bash benchmarks/gpu_session.sh test-rest       # the CPU-sized tests, run on the GPU (optional)
#   bash benchmarks/gpu_session.sh bench-attention
#   bash benchmarks/gpu_session.sh bench-kernels   # vq, token drop, decoding step, head + loss
#   bash benchmarks/gpu_session.sh bench-train     # MAGE-B training step at batch 256
#   bash benchmarks/gpu_session.sh bench-finetune  # MAGE-B fine-tuning step at batch 256
#   bash benchmarks/gpu_session.sh bench-sample    # MAGE-B sampling, T = 20 and 12
#   bash benchmarks/gpu_session.sh build test-kernels bench-kernels   # several in one call
#
# $OUT (default /tmp/mage-fast-gpu) receives three files, whatever happens: summary.txt (each
# stage's status and the tail of each log), logs.tgz (every log) and results.tgz (the contents
# of benchmarks/results, to unpack there and commit). After each bench stage,
# benchmarks/collect.py merges the tables so far into benchmarks/results/<device>-<date>.*.
# Every stage builds first if the build is missing, so stages run in any order.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mage-fast-gpu}
PY=${PY:-python3}
END=$((SECONDS + ${BUDGET:-540}))
LOGS=$(mktemp -d)
mkdir -p "$OUT" benchmarks/results
export PYTHONUNBUFFERED=1
status=0
# The fallback build (below) leaves the package importable from the source tree only.
[ -L mage_fast/kernels ] && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

pack() {
  { for log in "$LOGS"/*; do [ -f "$log" ] && { echo "== $(basename "$log")"; tail -15 "$log"; }; done
    echo "exit status: $status"; } > "$OUT/summary.txt"
  tar czf "$OUT/logs.tgz" -C "$LOGS" .
  tar czf "$OUT/results.tgz" -C benchmarks results
  echo "== status"; cat "$LOGS/status.log" 2>/dev/null; echo "exit status: $status"
}
trap pack EXIT

left() { echo $((END - SECONDS)); }

timed() {  # log name, folder, command...: run there under the time left, output to the log and stdout
  local log=$1 dir=$2; shift 2
  if [ "$(left)" -lt 30 ]; then echo "$log: skipped, the budget is spent" | tee -a "$LOGS/status.log"; status=1; return; fi
  pushd "$dir" > /dev/null
  timeout "$(left)" "$@" > >(tee "$LOGS/$log.log") 2>&1
  local rc=$?
  popd > /dev/null
  echo "$log: exit $rc" | tee -a "$LOGS/status.log"
  [ $rc -eq 0 ] || status=1
}

has_cuda_build() { $PY -c "import mage_fast._C as c; assert c.build_info()['cuda']" 2>/dev/null; }

build() {
  has_cuda_build && $PY -c "import mage_fast.kernels" 2>/dev/null && return 0
  { nvidia-smi; which nvcc ninja; nvcc --version | tail -1
    $PY -c "import torch, triton, numpy, PIL, tqdm, pytest, setuptools, pynvml
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__,
      'setuptools', setuptools.__version__)"; } > "$LOGS/preflight.log" 2>&1
  cat "$LOGS/preflight.log"
  # The extension for this chip only (setup.py; CI keeps compiling for sm_80 and sm_90).
  local cap; cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  [ -n "$cap" ] && export MAGE_FAST_CUDA_ARCHS=$cap
  local t0=$SECONDS
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$LOGS/build.log" 2>&1; then
    echo "pip install failed (tail of build.log below); building in place instead"
    tail -20 "$LOGS/build.log"
    ln -sfn ../kernels mage_fast/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    $PY setup.py build_ext --inplace >> "$LOGS/build.log" 2>&1
  fi
  has_cuda_build || { echo "mage_fast._C was not built with CUDA:"; tail -50 "$LOGS/build.log"; exit 1; }
  echo "build: $((SECONDS - t0)) s for sm_${MAGE_FAST_CUDA_ARCHS:-80 90}" | tee -a "$LOGS/status.log"
  $PY -m mage_fast.cli info 2>&1 | tee "$LOGS/info.log"
}

gpu_tests() {  # name, pytest arguments...
  local name=$1; shift
  # Every test's duration (the first to run a kernel also pays its Triton compile and autotune:
  # TRITON_PRINT_AUTOTUNING logs each autotune's time and choice) and a JUnit file per stage.
  TRITON_PRINT_AUTOTUNING=1 timed "tests-$name" . $PY -m pytest -rfEs --durations=0 --durations-min=0.5 \
    --junitxml="$LOGS/junit-$name.xml" -m gpu "$@"
}

bench() {  # name, script, arguments...
  local name=$1; shift
  timed "bench-$name" benchmarks $PY "$@"
}

stage() {
  case "$1" in
    build)
      # Every kernel config as launched, compiled by this machine's Triton: fails on a spill or a
      # config that cannot launch; the report it writes goes into logs.tgz, beside the committed one.
      timed compile-report . $PY benchmarks/compile_report.py --out "$LOGS/compile-report.md"
      for k in attention vq token_drop decode_step mlm_loss train sampler; do
        timed "smoke-$k" benchmarks $PY "bench_$k.py" --smoke --results-dir "$LOGS/smoke"
      done ;;
    test-attention) gpu_tests attention tests/test_attention.py ;;
    test-kernels) gpu_tests kernels tests/test_backends.py tests/test_token_drop.py tests/test_vq.py tests/test_decode_step.py ;;
    test-models)
      gpu_tests models tests --ignore=tests/test_backends.py --ignore=tests/test_attention.py \
        --ignore=tests/test_token_drop.py --ignore=tests/test_vq.py --ignore=tests/test_decode_step.py ;;
    test-rest) timed tests-rest . $PY -m pytest -rfEs --durations=30 -m "not gpu" tests ;;
    bench-attention) bench attention bench_attention.py ;;
    bench-kernels) for k in vq token_drop decode_step mlm_loss; do bench "$k" "bench_$k.py"; done ;;
    bench-train) bench train bench_train.py --batch 256 ;;
    bench-finetune) bench finetune bench_train.py --batch 256 --workload finetune ;;
    bench-sample) bench sample bench_sampler.py ;;
    *) echo "unknown stage $1; stages: build test-attention test-kernels test-models test-rest" \
            "bench-attention bench-kernels bench-train bench-finetune bench-sample"; status=2; return ;;
  esac
  case "$1" in bench-*) timed "collect-$1" benchmarks $PY collect.py ;; esac
}

[ $# -gt 0 ] || { stage usage; exit 2; }
build
for s in "$@"; do stage "$s"; done
exit $status
