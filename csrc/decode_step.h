// One MAGE decoding step over raw pointers: the parameters both implementations take.
// Torch-free, so decode_step_kernel.cu needs only CUDA headers.
#pragma once

#include "decode_math.h"

namespace mage_fast {

struct DecodeStepParams {
  const void* logits;               // [batch, positions, num_classes], classes contiguous
  int64_t batch_stride, row_stride; // of logits, in elements (a [:, 1:, :1024] slice reads in place)
  LogitType logit_type;
  const int64_t* ids;               // [batch, positions], mask_id where unknown
  const int64_t* seeds;             // [batch], or null when u_sample/u_gumbel are given
  const float* u_sample;            // [batch, positions] or null
  const float* u_gumbel;            // [batch, positions] or null
  const int64_t* num_initial_unknown;  // [batch] or null (= positions)
  int64_t* next_ids;                // out: ids with the re-masked positions set to mask_id
  int64_t* filled;                  // out: every unknown position sampled
  float* confidence;                // scratch [batch, positions]
  int64_t batch, positions;
  int num_classes;
  uint32_t step;
  float tau;                        // choice_temperature * (1 - (step+1)/num_iter), rounded to float
  double mask_ratio;                // cos(pi/2 (step+1)/num_iter)
  int64_t mask_id;
};

MF_HD int64_t logits_offset(const DecodeStepParams& p, int64_t row) {
  return (row / p.positions) * p.batch_stride + (row % p.positions) * p.row_stride;
}

// The uniform of a row (b, n) for a stream: given noise, or Philox keyed by (seed, step, n, stream).
MF_HD float row_uniform(const DecodeStepParams& p, int64_t row, uint32_t stream) {
  const float* given = stream == kStreamSample ? p.u_sample : p.u_gumbel;
  if (given) return given[row];
  return philox_uniform(p.seeds[row / p.positions], p.step, uint32_t(row % p.positions), stream);
}

// Launches the CUDA step on `stream` (a cudaStream_t); returns null or an error message.
const char* launch_decode_step_cuda(const DecodeStepParams& p, void* stream);

}  // namespace mage_fast
