#!/usr/bin/env bash
# A GPU session in short calls, each well inside a 10-minute limit, on a machine with torch,
# triton and nvcc (no network): build the CUDA extension, run the GPU tests, run the benchmarks.
# Everything lands in $OUT (default /tmp/mage-fast-gpu) as logs and one results.tgz to unpack
# into benchmarks/results/ and commit; after each bench stage, benchmarks/collect.py merges the
# tables so far into benchmarks/results/<device>-<date>.{json,md,png}. Every stage builds first if the build is missing, so
# they can run in any order; run them back to back so the machine stays warm.
#
#   bash benchmarks/gpu_session.sh build           # pre-flight, build, `mage-fast info`, every benchmark --smoke
#   bash benchmarks/gpu_session.sh test-attention  # tests marked gpu: attention (many autotuned compiles)
#   bash benchmarks/gpu_session.sh test-kernels    # tests marked gpu: token drop, vq, decoding step, backends
#   bash benchmarks/gpu_session.sh test-models     # the other tests marked gpu: model, training, sampler, ...
#   bash benchmarks/gpu_session.sh test-rest       # the CPU-sized tests, run on the GPU (optional)
#   bash benchmarks/gpu_session.sh bench-attention
#   bash benchmarks/gpu_session.sh bench-kernels   # vq, token drop, decoding step, head + loss
#   bash benchmarks/gpu_session.sh bench-train     # MAGE-B training step at batch 256
#   bash benchmarks/gpu_session.sh bench-sample    # MAGE-B sampling, T = 20 and 12
set -uo pipefail
status=0
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mage-fast-gpu}
PY=${PY:-python3}
LIMIT=${LIMIT:-540}  # per command: the tar at the end must still run inside the call's limit
mkdir -p "$OUT" benchmarks/results
export PYTHONUNBUFFERED=1
# The fallback build (below) leaves the package importable from the source tree only.
[ -L mage_fast/kernels ] && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

has_cuda_build() { $PY -c "import mage_fast._C as c; assert c.build_info()['cuda']" 2>/dev/null; }

build() {
  has_cuda_build && $PY -c "import mage_fast.kernels" 2>/dev/null && return 0
  { nvidia-smi; which nvcc ninja; nvcc --version | tail -1
    $PY -c "import torch, triton, numpy, PIL, tqdm, pytest, setuptools, pynvml
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__,
      'setuptools', setuptools.__version__)"; } > "$OUT/preflight.txt" 2>&1
  cat "$OUT/preflight.txt"
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    echo "pip install failed (tail of build.log below); building in place instead"
    tail -20 "$OUT/build.log"
    ln -sfn ../kernels mage_fast/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    $PY setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
  fi
  has_cuda_build || { echo "mage_fast._C was not built with CUDA:"; tail -50 "$OUT/build.log"; exit 1; }
  $PY -m mage_fast.cli info | tee "$OUT/info.txt"
}

gpu_tests() {  # name, files...
  local name=$1; shift
  timeout "$LIMIT" $PY -m pytest -v -rs --durations=30 -m gpu "$@" 2>&1 | tee "$OUT/tests-$name.log" || status=1
}

bench() {  # name, command...
  local name=$1; shift
  (cd benchmarks && timeout "$LIMIT" "$@") 2>&1 | tee "$OUT/bench-$name.log" || status=1
}

build
case "${1:-}" in
  build)
    for k in attention vq token_drop decode_step mlm_loss train sampler; do
      (cd benchmarks && $PY "bench_$k.py" --smoke --results-dir "$OUT/smoke") > "$OUT/smoke-$k.log" 2>&1 \
        && echo "smoke $k: ok" || { echo "smoke $k: FAILED"; tail -20 "$OUT/smoke-$k.log"; status=1; }
    done
    ;;
  test-attention) gpu_tests attention tests/test_attention.py ;;
  test-kernels)
    gpu_tests kernels tests/test_backends.py tests/test_token_drop.py tests/test_vq.py tests/test_decode_step.py
    ;;
  test-models)
    gpu_tests models tests --ignore=tests/test_backends.py --ignore=tests/test_attention.py \
      --ignore=tests/test_token_drop.py --ignore=tests/test_vq.py --ignore=tests/test_decode_step.py
    ;;
  test-rest)
    timeout "$LIMIT" $PY -m pytest -v -rs --durations=30 -m "not gpu" tests 2>&1 | tee "$OUT/tests-rest.log" || status=1
    ;;
  bench-attention) bench attention $PY bench_attention.py ;;
  bench-kernels)
    for k in vq token_drop decode_step mlm_loss; do bench "$k" $PY "bench_$k.py"; done
    ;;
  bench-train) bench train $PY bench_train.py --batch 256 ;;
  bench-sample) bench sample $PY bench_sampler.py ;;
  *)
    echo "usage: $0 build|test-attention|test-kernels|test-models|test-rest|bench-attention|bench-kernels|bench-train|bench-sample"
    exit 2 ;;
esac
# Each bench stage adds its tables to <device>-<date>.{json,md,png}, the report of the whole session.
case "${1:-}" in bench-*) (cd benchmarks && $PY collect.py) 2>&1 | tee -a "$OUT/collect.log" || status=1 ;; esac
tar czf "$OUT/results.tgz" -C benchmarks results
exit $status
