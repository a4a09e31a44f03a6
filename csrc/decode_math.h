// The arithmetic of one MAGE decoding step, shared by the C++ (CPU) and CUDA ops.
//
// It is the definition in mage_fast/reference/decoding.py, operation for operation: Philox
// keyed by (seed, step, position, stream), exp/log as fixed polynomials of IEEE +,-,*,/ (each
// correctly rounded on every platform; both compilers run with FMA contraction off, see
// setup.py), sums in a fixed order. That is what makes CPU, CUDA and the PyTorch reference
// agree bit for bit. Only standard headers here: the .cu file includes this and no torch header.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MF_HD __host__ __device__ __forceinline__
#else
#define MF_HD inline
#endif

namespace mage_fast {

constexpr int kLanes = 32;          // a row of logits is split into 32 lanes: lane l holds columns l, l+32, ...
constexpr int kMaxClasses = 1024;   // the CUDA kernel keeps a lane's columns in registers
constexpr uint32_t kStreamSample = 0;  // the categorical draw (rng.py STREAM_SAMPLE)
constexpr uint32_t kStreamGumbel = 1;  // the confidence noise (rng.py STREAM_GUMBEL)

// float32 constants as hex floats, identical to decoding.py.
constexpr float kLog2e = 0x1.715476p+0f;
constexpr float kLn2Hi = 0x1.62e4p-1f;
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
constexpr float kSqrt2 = 0x1.6a09e6p+0f;
constexpr float kExpUnderflow = -80.0f;

MF_HD float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
MF_HD uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// ---------------------------------------------------------------- Philox4x32-10
struct Philox4 { uint32_t w[4]; };

MF_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c.w[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c.w[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = Philox4{{hi1 ^ c.w[1] ^ k0, lo1, hi0 ^ c.w[3] ^ k1, lo0}};
  }
  return c;
}

// u in [2^-24, 1 - 2^-24]: 23 random bits with the lowest bit set, exact in float32.
MF_HD float philox_uniform(int64_t seed, uint32_t step, uint32_t position, uint32_t stream) {
  const uint64_t s = uint64_t(seed);
  const Philox4 out = philox4x32_10(Philox4{{position, step, stream, 0u}}, uint32_t(s), uint32_t(s >> 32));
  return float((out.w[0] >> 8) | 1u) * 0x1p-24f;
}

// ---------------------------------------------------------------- exp, log
MF_HD float exact_exp(float x) {  // for x <= 0: 2^y, y = x log2(e) (decoding.py exact_exp)
  if (x < kExpUnderflow) return 0.0f;
  const float y = x * kLog2e;
  // Adding 1.5 * 2^23 rounds y to an integer, half to even: the same k as rintf, on the
  // full-rate float pipe, and the integer sits in t's low mantissa bits for 2^k.
  const float t = y + 0x1.8p23f;
  const float k = t - 0x1.8p23f;
  const float r = y - k;              // exact: |r| <= 1/2
  float p = 0x1.5bba14p-10f;          // 2^r, EXP2_COEFFS n = 5..0 (Horner)
  p = p * r + 0x1.3cea88p-7f;
  p = p * r + 0x1.c6b752p-5f;
  p = p * r + 0x1.ebf9bcp-3f;
  p = p * r + 0x1.62e42ap-1f;
  p = p * r + 0x1p+0f;
  return p * bits_to_float((float_to_bits(t) - 0x4B400000u + 127u) << 23);
}

MF_HD float exact_log(float x) {  // for normal x > 0
  const uint32_t bits = float_to_bits(x);
  int e = int(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x7FFFFFu) | 0x3F800000u);
  if (m > kSqrt2) { m = m * 0.5f; e += 1; }
  const float ef = float(e);
  const float f = (m - 1.0f) / (m + 1.0f);
  const float s = f * f;
  float p = 0x1.c71c72p-3f;           // 2/(2n+1), n = 4..0 (Horner in f^2)
  p = p * s + 0x1.24924ap-2f;
  p = p * s + 0x1.99999ap-2f;
  p = p * s + 0x1.555556p-1f;
  p = p * s + 0x1p+1f;
  const float log_m = f * p;
  return ef * kLn2Hi + (log_m + ef * kLn2Lo);
}

MF_HD float gumbel(float u) { return -exact_log(-exact_log(u)); }

// ---------------------------------------------------------------- logits of any float dtype
enum class LogitType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Exact half -> float from the bits, the same on host and device.
MF_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_to_float(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  const float mag = float(man) * 0x1p-24f;  // subnormal half: exact in float
  return sign ? -mag : mag;
}

template <LogitType T>
MF_HD float load_logit(const void* p, int64_t i) {
  if constexpr (T == LogitType::kFloat32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (T == LogitType::kFloat16) {
    return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  } else {
    return bits_to_float(uint32_t(static_cast<const uint16_t*>(p)[i]) << 16);
  }
}

// ---------------------------------------------------------------- the step's pieces
struct Draw { int64_t id; float log_p; };

// Inverse-CDF draw from softmax(row) with uniform u, exactly as sample_categorical in
// decoding.py: lane sums in column order, lane prefix in lane order, then the column inside
// the chosen lane. Sequential form (the CPU op); the CUDA kernel computes the same sums with
// one thread per lane.
template <LogitType T>
MF_HD Draw sample_row(const void* logits, int64_t row_offset, int num_classes, float u) {
  float m = load_logit<T>(logits, row_offset);
  for (int v = 1; v < num_classes; ++v) {
    const float x = load_logit<T>(logits, row_offset + v);
    m = x > m ? x : m;
  }
  float lane_sum[kLanes], lane_end[kLanes];
  float acc = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    float s = 0.0f;
    for (int v = l; v < num_classes; v += kLanes) s = s + exact_exp(load_logit<T>(logits, row_offset + v) - m);
    lane_sum[l] = s;
    acc = acc + s;
    lane_end[l] = acc;
  }
  const float total = lane_end[kLanes - 1];
  const float threshold = u * total;
  int lane = -1, last_positive = 0;
  for (int l = 0; l < kLanes; ++l) {
    if (lane < 0 && lane_end[l] > threshold) lane = l;
    if (lane_sum[l] > 0.0f) last_positive = l;
  }
  if (lane < 0) lane = last_positive;
  const float rest = threshold - (lane > 0 ? lane_end[lane - 1] : 0.0f);
  int64_t id = -1, last = lane;
  acc = 0.0f;
  for (int v = lane; v < num_classes; v += kLanes) {
    const float e = exact_exp(load_logit<T>(logits, row_offset + v) - m);
    acc = acc + e;
    if (id < 0 && acc > rest) id = v;
    if (e > 0.0f) last = v;
  }
  if (id < 0) id = last;
  return Draw{id, (load_logit<T>(logits, row_offset + id) - m) - exact_log(total)};
}

// Positions re-masked this step: max(1, min(#unknown - 1, floor(N0 * mask_ratio))), or 0 when
// nothing is unknown. mask_ratio is cos(pi/2 (t+1)/T), computed once on the host.
MF_HD int64_t mask_length(int64_t num_unknown, int64_t num_initial_unknown, double mask_ratio) {
  if (num_unknown == 0) return 0;
  const int64_t target = int64_t(floor(double(num_initial_unknown) * mask_ratio));
  const int64_t upper = num_unknown - 1 < target ? num_unknown - 1 : target;
  return upper > 1 ? upper : 1;
}

// Ties go to the lower position; a NaN confidence sorts after everything, as torch.sort does.
MF_HD bool ranks_before(float a, int64_t i, float b, int64_t j) {
  if (a != a) return b != b && i < j;
  if (b != b) return true;
  return a < b || (a == b && i < j);
}

}  // namespace mage_fast
