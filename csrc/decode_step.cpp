// The decoding-step ops: schema, input checks, the CPU implementation, and the CUDA binding
// (built when the extension has CUDA). Exposed as torch.ops.mage_fast.decode_step{,_with_noise}.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "decode_step.h"

#ifdef MAGE_FAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mage_fast {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor>;

LogitType logit_type_of(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat: return LogitType::kFloat32;
    case at::kHalf: return LogitType::kFloat16;
    case at::kBFloat16: return LogitType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "decode_step: logits must be float32, float16 or bfloat16, got ", logits.scalar_type());
  }
}

void check_like(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape,
                const at::Tensor& logits) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "decode_step: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, "decode_step: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == logits.device(), "decode_step: ", name, " is on ", t.device(),
                    " but logits are on ", logits.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "decode_step: ", name, " must be contiguous");
}

struct Step {
  DecodeStepParams params;
  at::Tensor next_ids, filled, confidence;  // the tensors params points into
};

// Checks every input, allocates the outputs, and fills the raw-pointer parameters.
Step prepare(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor* seeds, const at::Tensor* u_sample,
             const at::Tensor* u_gumbel, int64_t step, int64_t num_iter, double choice_temperature,
             const std::optional<at::Tensor>& num_initial_unknown, int64_t mask_id) {
  TORCH_CHECK_VALUE(logits.dim() == 3, "decode_step: logits must be [batch, positions, classes], got ", logits.sizes());
  const LogitType type = logit_type_of(logits);
  TORCH_CHECK_VALUE(logits.stride(2) == 1, "decode_step: logits must be contiguous along the classes");
  const int64_t batch = logits.size(0), positions = logits.size(1), classes = logits.size(2);
  TORCH_CHECK_VALUE(classes >= 1 && classes <= kMaxClasses, "decode_step: supports 1 to ", kMaxClasses,
                    " classes (MAGE's codebook is 1024), got ", classes);
  TORCH_CHECK_VALUE(positions >= 1 && positions <= 1024, "decode_step: supports 1 to 1024 positions, got ", positions);
  TORCH_CHECK_VALUE(num_iter >= 1 && step >= 0 && step < num_iter, "decode_step: need 0 <= step < num_iter, got step ",
                    step, ", num_iter ", num_iter);
  TORCH_CHECK_VALUE(std::isfinite(choice_temperature) && choice_temperature >= 0,
                    "decode_step: choice_temperature must be finite and >= 0, got ", choice_temperature);
  check_like(ids, "ids", at::kLong, {batch, positions}, logits);
  if (seeds) check_like(*seeds, "seeds", at::kLong, {batch}, logits);
  if (u_sample) check_like(*u_sample, "u_sample", at::kFloat, {batch, positions}, logits);
  if (u_gumbel) check_like(*u_gumbel, "u_gumbel", at::kFloat, {batch, positions}, logits);
  if (num_initial_unknown) check_like(*num_initial_unknown, "num_initial_unknown", at::kLong, {batch}, logits);

  Step s{{}, at::empty_like(ids), at::empty_like(ids), at::empty({batch, positions}, logits.options().dtype(at::kFloat))};
  DecodeStepParams& p = s.params;
  p.logits = logits.data_ptr();
  p.batch_stride = logits.stride(0);
  p.row_stride = logits.stride(1);
  p.logit_type = type;
  p.ids = ids.data_ptr<int64_t>();
  p.seeds = seeds ? seeds->data_ptr<int64_t>() : nullptr;
  p.u_sample = u_sample ? u_sample->data_ptr<float>() : nullptr;
  p.u_gumbel = u_gumbel ? u_gumbel->data_ptr<float>() : nullptr;
  p.num_initial_unknown = num_initial_unknown ? num_initial_unknown->data_ptr<int64_t>() : nullptr;
  p.next_ids = s.next_ids.data_ptr<int64_t>();
  p.filled = s.filled.data_ptr<int64_t>();
  p.confidence = s.confidence.data_ptr<float>();
  p.batch = batch;
  p.positions = positions;
  p.num_classes = int(classes);
  p.step = uint32_t(step);
  // The same double expressions, in the same order, as mage_fast/reference/decoding.py.
  p.tau = float(choice_temperature * (1.0 - double(step + 1) / double(num_iter)));
  p.mask_ratio = std::cos(M_PI / 2.0 * double(step + 1) / double(num_iter));
  p.mask_id = mask_id;
  return s;
}

template <LogitType T>
void sample_rows_cpu(const DecodeStepParams& p) {
  at::parallel_for(0, p.batch * p.positions, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (p.ids[row] != p.mask_id) {
        p.filled[row] = p.ids[row];
        p.confidence[row] = INFINITY;
        continue;
      }
      const Draw d = sample_row<T>(p.logits, logits_offset(p, row), p.num_classes, row_uniform(p, row, kStreamSample));
      p.filled[row] = d.id;
      p.confidence[row] = d.log_p + p.tau * gumbel(row_uniform(p, row, kStreamGumbel));
    }
  });
}

void remask_cpu(const DecodeStepParams& p) {
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* ids = p.ids + b * p.positions;
      const float* conf = p.confidence + b * p.positions;
      int64_t unknown = 0;
      for (int64_t i = 0; i < p.positions; ++i) unknown += ids[i] == p.mask_id;
      const int64_t n0 = p.num_initial_unknown ? p.num_initial_unknown[b] : p.positions;
      const int64_t length = mask_length(unknown, n0, p.mask_ratio);
      for (int64_t i = 0; i < p.positions; ++i) {
        int64_t rank = 0;
        for (int64_t j = 0; j < p.positions; ++j) rank += ranks_before(conf[j], j, conf[i], i);
        const int64_t row = b * p.positions + i;
        p.next_ids[row] = rank < length ? p.mask_id : p.filled[row];
      }
    }
  });
}

void run_cpu(const DecodeStepParams& p) {
  switch (p.logit_type) {
    case LogitType::kFloat32: sample_rows_cpu<LogitType::kFloat32>(p); break;
    case LogitType::kFloat16: sample_rows_cpu<LogitType::kFloat16>(p); break;
    case LogitType::kBFloat16: sample_rows_cpu<LogitType::kBFloat16>(p); break;
  }
  remask_cpu(p);
}

template <bool kCuda>
void run(const DecodeStepParams& p, const at::Tensor& logits) {
  if (p.batch == 0) return;
#ifdef MAGE_FAST_WITH_CUDA
  if constexpr (kCuda) {
    const c10::cuda::CUDAGuard guard(logits.device());
    const char* error = launch_decode_step_cuda(p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(error == nullptr, "decode_step: CUDA launch failed: ", error);
    return;
  }
#endif
  run_cpu(p);
}

template <bool kCuda>
Result decode_step(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& seeds, int64_t step,
                   int64_t num_iter, double choice_temperature, const std::optional<at::Tensor>& num_initial_unknown,
                   int64_t mask_id) {
  Step s = prepare(logits, ids, &seeds, nullptr, nullptr, step, num_iter, choice_temperature, num_initial_unknown, mask_id);
  run<kCuda>(s.params, logits);
  return {s.next_ids, s.filled};
}

template <bool kCuda>
Result decode_step_with_noise(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& u_sample,
                              const at::Tensor& u_gumbel, int64_t step, int64_t num_iter, double choice_temperature,
                              const std::optional<at::Tensor>& num_initial_unknown, int64_t mask_id) {
  Step s = prepare(logits, ids, nullptr, &u_sample, &u_gumbel, step, num_iter, choice_temperature,
                   num_initial_unknown, mask_id);
  run<kCuda>(s.params, logits);
  return {s.next_ids, s.filled};
}

}  // namespace

TORCH_LIBRARY(mage_fast, m) {
  m.def("decode_step(Tensor logits, Tensor ids, Tensor seeds, int step, int num_iter, float choice_temperature, "
        "Tensor? num_initial_unknown=None, int mask_id=2024) -> (Tensor, Tensor)");
  m.def("decode_step_with_noise(Tensor logits, Tensor ids, Tensor u_sample, Tensor u_gumbel, int step, "
        "int num_iter, float choice_temperature, Tensor? num_initial_unknown=None, int mask_id=2024) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mage_fast, CPU, m) {
  m.impl("decode_step", &decode_step<false>);
  m.impl("decode_step_with_noise", &decode_step_with_noise<false>);
}

#ifdef MAGE_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(mage_fast, CUDA, m) {
  m.impl("decode_step", &decode_step<true>);
  m.impl("decode_step_with_noise", &decode_step_with_noise<true>);
}
#endif

}  // namespace mage_fast
