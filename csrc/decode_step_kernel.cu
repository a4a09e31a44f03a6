// The CUDA decoding step: two kernels, launched on the caller's stream (graph-capturable: no
// allocation, no sync). Arithmetic from decode_math.h, compiled with --fmad=false so every
// operation rounds as in the C++ and PyTorch versions. Only CUDA and standard headers here.
#include <cuda_runtime.h>

#include "decode_step.h"

namespace mage_fast {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kColumnsPerLane = kMaxClasses / kLanes;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// One warp per token row. Lane l holds columns l, l+32, ... in registers: each column load is a
// coalesced 32-wide access and the row is read from memory once. Known rows are skipped, so
// their logits are never read.
template <LogitType T>
__global__ void __launch_bounds__(kWarpsPerBlock * kLanes) sample_kernel(const DecodeStepParams p) {
  const int lane = threadIdx.x % kLanes;
  const int64_t rows = p.batch * p.positions;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kLanes;
  if (row >= rows) return;
  if (p.ids[row] != p.mask_id) {
    if (lane == 0) {
      p.filled[row] = p.ids[row];
      p.confidence[row] = INFINITY;
    }
    return;
  }
  const int64_t base = logits_offset(p, row);
  float x[kColumnsPerLane];
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < kColumnsPerLane; ++j) {
    const int v = lane + j * kLanes;
    x[j] = v < p.num_classes ? load_logit<T>(p.logits, base + v) : -INFINITY;
    m = x[j] > m ? x[j] : m;
  }
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {  // max is exact in any order
    const float other = __shfl_xor_sync(kFullMask, m, offset);
    m = other > m ? other : m;
  }
  float lane_sum = 0.0f;  // padding columns give exp(-inf) = 0: an exact no-op
#pragma unroll
  for (int j = 0; j < kColumnsPerLane; ++j) lane_sum = lane_sum + exact_exp(x[j] - m);

  // Every lane walks the 32 lane sums in lane order (the sequential prefix of the definition).
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total = total + __shfl_sync(kFullMask, lane_sum, l);
  const float threshold = row_uniform(p, row, kStreamSample) * total;
  int chosen = -1, last_positive = 0;
  float start = 0.0f, start_of_last = 0.0f, acc = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    const float s = __shfl_sync(kFullMask, lane_sum, l);
    const float before = acc;
    acc = acc + s;
    if (chosen < 0 && acc > threshold) { chosen = l; start = before; }
    if (s > 0.0f) { last_positive = l; start_of_last = before; }
  }
  if (chosen < 0) { chosen = last_positive; start = start_of_last; }
  if (lane != chosen) return;

  const float rest = threshold - start;
  int id = -1, last = lane;
  float x_id = x[0], x_last = x[0];
  acc = 0.0f;
#pragma unroll
  for (int j = 0; j < kColumnsPerLane; ++j) {
    const int v = lane + j * kLanes;
    if (v < p.num_classes) {
      const float e = exact_exp(x[j] - m);
      acc = acc + e;
      if (id < 0 && acc > rest) { id = v; x_id = x[j]; }
      if (e > 0.0f) { last = v; x_last = x[j]; }
    }
  }
  if (id < 0) { id = last; x_id = x_last; }
  const float log_p = (x_id - m) - exact_log(total);
  p.filled[row] = id;
  p.confidence[row] = log_p + p.tau * gumbel(row_uniform(p, row, kStreamGumbel));
}

// One block per image: rank every position's confidence (ties to the lower position) and send
// the mask_length lowest back to the mask.
__global__ void remask_kernel(const DecodeStepParams p) {
  extern __shared__ float confidence[];
  const int64_t b = blockIdx.x;
  const int i = threadIdx.x;
  const int64_t row = b * p.positions + i;
  const bool valid = i < p.positions;
  if (valid) confidence[i] = p.confidence[row];
  const int64_t unknown = __syncthreads_count(valid && p.ids[row] == p.mask_id);
  if (!valid) return;
  const int64_t n0 = p.num_initial_unknown ? p.num_initial_unknown[b] : p.positions;
  const int64_t length = mask_length(unknown, n0, p.mask_ratio);
  const float mine = confidence[i];
  int64_t rank = 0;
  for (int j = 0; j < p.positions; ++j) rank += ranks_before(confidence[j], j, mine, i);
  p.next_ids[row] = rank < length ? p.mask_id : p.filled[row];
}

template <LogitType T>
void launch_sample(const DecodeStepParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.batch * p.positions + kWarpsPerBlock - 1) / kWarpsPerBlock;
  sample_kernel<T><<<unsigned(blocks), kWarpsPerBlock * kLanes, 0, stream>>>(p);
}

}  // namespace

const char* launch_decode_step_cuda(const DecodeStepParams& p, void* stream_ptr) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.logit_type) {
    case LogitType::kFloat32: launch_sample<LogitType::kFloat32>(p, stream); break;
    case LogitType::kFloat16: launch_sample<LogitType::kFloat16>(p, stream); break;
    case LogitType::kBFloat16: launch_sample<LogitType::kBFloat16>(p, stream); break;
  }
  const int threads = int((p.positions + kLanes - 1) / kLanes * kLanes);
  remask_kernel<<<unsigned(p.batch), threads, size_t(p.positions) * sizeof(float), stream>>>(p);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace mage_fast
