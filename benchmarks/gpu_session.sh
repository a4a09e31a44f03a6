#!/usr/bin/env bash
# A GPU session in a few calls, each well inside a 10-minute limit, on a machine with torch,
# triton and nvcc (no network): build the CUDA extension, run the GPU tests, run the benchmarks.
# Everything lands in $OUT (default /tmp/mage-fast-gpu) as logs and one results.tgz to unpack
# into benchmarks/results/ and commit.
#
#   bash benchmarks/gpu_session.sh test            # build + every test marked gpu
#   bash benchmarks/gpu_session.sh bench-kernels   # the per-kernel scripts
#   bash benchmarks/gpu_session.sh bench-models    # training (batch 256) and sampling (T 20 and 12)
set -uo pipefail
status=0
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mage-fast-gpu}
mkdir -p "$OUT" benchmarks/results
export PYTHONUNBUFFERED=1
PY=python3

build() {
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  $PY -c "import mage_fast._C" 2>/dev/null && $PY -c "import mage_fast._C as c; assert c.build_info()['cuda']" \
    || $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  $PY -m mage_fast.cli info | tee "$OUT/info.txt"
}

case "${1:-}" in
  test)
    build
    $PY -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu-tests.log" || status=1
    ;;
  bench-kernels)
    build
    for k in attention vq token_drop decode_step mlm_loss; do
      (cd benchmarks && $PY "bench_$k.py") 2>&1 | tee "$OUT/bench-$k.log" || status=1
    done
    ;;
  bench-models)
    build
    $PY benchmarks/run_all.py --what train --batch 256 2>&1 | tee "$OUT/bench-train.log" || status=1
    (cd benchmarks && $PY bench_sampler.py) 2>&1 | tee "$OUT/bench-sampler.log" || status=1
    ;;
  *)
    echo "usage: $0 test|bench-kernels|bench-models"; exit 2 ;;
esac
tar czf "$OUT/results.tgz" -C benchmarks results
exit $status
