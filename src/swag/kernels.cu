// Fused SWAG kernels for CUDA (compiled to PTX by build.rs when the `cuda` feature is on).
//
// Bit-identity with the CPU kernels (src/swag/kernels.rs, src/swag/noise.rs): every
// floating-point operation is written with its round-to-nearest intrinsic (__fadd_rn,
// __fmul_rn, ...), which the compiler never contracts into a fused multiply-add, in the order
// the Rust code performs it; constants are given by their f32 bit patterns. build.rs also passes
// --fmad=false -ftz=false -prec-div=true -prec-sqrt=true. Change both sides together.
#include <stdint.h>
#include <cuda_fp16.h>

#define ADD __fadd_rn
#define SUB __fsub_rn
#define MUL __fmul_rn
#define DIV __fdiv_rn
#define SQRT __fsqrt_rn

// Constants, as the Rust code rounds them (bit patterns).
#define LN_C3 __uint_as_float(0x3eaaaaabu)
#define LN_C5 __uint_as_float(0x3e4ccccdu)
#define LN_C7 __uint_as_float(0x3e124925u)
#define LN_C9 __uint_as_float(0x3de38e39u)
#define LN2_HI __uint_as_float(0x3f318000u)
#define LN2_LO __uint_as_float(0xb95e8083u)
// Giles' erfinv, centre (P0 highest degree) and tail (Q0) polynomials.
#define P0 __uint_as_float(0x32f16588u)
#define P1 __uint_as_float(0x34b84b36u)
#define P2 __uint_as_float(0xb66c7357u)
#define P3 __uint_as_float(0xb6935ac1u)
#define P4 __uint_as_float(0x396532dbu)
#define P5 __uint_as_float(0xbaa45408u)
#define P6 __uint_as_float(0xbb88e4efu)
#define P7 __uint_as_float(0x3e7c8f63u)
#define P8 __uint_as_float(0x3fc02e2fu)
#define Q0 __uint_as_float(0xb951f09bu)
#define Q1 __uint_as_float(0x38d3b56bu)
#define Q2 __uint_as_float(0x3ab0dc72u)
#define Q3 __uint_as_float(0xbb70bde7u)
#define Q4 __uint_as_float(0x3bbc127bu)
#define Q5 __uint_as_float(0xbbf9c5d7u)
#define Q6 __uint_as_float(0x3c1aa57eu)
#define Q7 __uint_as_float(0x3f8036dbu)
#define Q8 __uint_as_float(0x40354f7eu)
#define SQRT_2 __uint_as_float(0x3fb504f3u)
#define TWO_POW_M31 __uint_as_float(0x30000000u)
#define TWO_POW_M32 __uint_as_float(0x2f800000u)
#define SPLITTER 4097.0f

#define Z1_STREAM 0u

// ---------------------------------------------------------------- noise (src/swag/noise.rs)

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

__device__ __forceinline__ float portable_ln(float x) {
  uint32_t bits = __float_as_uint(x);
  int e = (int)((bits >> 23) & 0xffu) - 127;
  float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
  if (m > SQRT_2) {
    m = MUL(m, 0.5f);
    e += 1;
  }
  float f = SUB(m, 1.0f);
  float s = DIV(f, ADD(2.0f, f));
  float s2 = MUL(s, s);
  float poly = MUL(ADD(MUL(ADD(MUL(ADD(MUL(s2, LN_C9), LN_C7), s2), LN_C5), s2), LN_C3), s2);
  float two_s = ADD(s, s);
  float ln_m = ADD(two_s, MUL(two_s, poly));
  float ef = __int2float_rn(e);
  return ADD(MUL(ef, LN2_HI), ADD(MUL(ef, LN2_LO), ln_m));
}

#define HORNER9(c, w)                                                                         \
  ADD(c##8, MUL(ADD(c##7, MUL(ADD(c##6, MUL(ADD(c##5, MUL(ADD(c##4, MUL(ADD(c##3, MUL(           \
      ADD(c##2, MUL(ADD(c##1, MUL(c##0, w)), w)), w)), w)), w)), w)), w)), w))

__device__ __forceinline__ float normal_from_bits(uint32_t u) {
  uint32_t m = u & 0x7fffffffu;
  uint32_t n = 0x7fffffffu - m;
  float x = -ADD(MUL(__uint2float_rn(n), TWO_POW_M31), TWO_POW_M32);
  float two_p = ADD(MUL(__uint2float_rn(m), TWO_POW_M31), TWO_POW_M32);
  float w = -portable_ln(MUL(SUB(1.0f, x), two_p));
  float poly;
  if (w < 5.0f) {
    float v = SUB(w, 2.5f);
    poly = HORNER9(P, v);
  } else {
    float v = SUB(SQRT(w), 3.0f);
    poly = HORNER9(Q, v);
  }
  float z = MUL(MUL(poly, x), SQRT_2);
  return __uint_as_float(__float_as_uint(z) ^ (u & 0x80000000u));
}

// Normals of coordinates first..first+n of parameter `param` in `stream` (noise_for_seed and
// the agreement tests).
extern "C" __global__ void swag_normals(float* out, uint64_t first, uint64_t n, uint32_t seed_lo,
                                        uint32_t seed_hi, uint32_t param, uint32_t stream) {
  for (uint64_t k = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; k < n;
       k += (uint64_t)gridDim.x * blockDim.x) {
    uint64_t i = first + k;
    uint64_t g = i >> 2;
    uint4 w = philox4x32_10(make_uint4((uint32_t)g, (uint32_t)(g >> 32), param, stream), seed_lo,
                            seed_hi);
    uint32_t lane = (uint32_t)(i & 3);
    uint32_t bits = lane == 0 ? w.x : lane == 1 ? w.y : lane == 2 ? w.z : w.w;
    out[k] = normal_from_bits(bits);
  }
}

// ---------------------------------------------------------------- collect (kernels.rs)

__device__ __forceinline__ void split(float a, float* hi, float* lo) {
  float c = MUL(SPLITTER, a);
  *hi = SUB(c, SUB(c, a));
  *lo = SUB(a, *hi);
}

// One compensated Welford step (kernels::welford_step); returns theta - mean (updated).
__device__ __forceinline__ float welford_step(float* mean, float* comp, float* m2, float t,
                                              float inv, float count) {
  float hi = *mean, lo = *comp;
  float delta = SUB(SUB(t, hi), lo);
  float step = MUL(delta, inv);
  float p = MUL(step, count);
  float ah, al, bh, bl;
  split(step, &ah, &al);
  split(count, &bh, &bl);
  float p_err = ADD(ADD(ADD(SUB(MUL(ah, bh), p), MUL(ah, bl)), MUL(al, bh)), MUL(al, bl));
  float step_lo = MUL(SUB(SUB(delta, p), p_err), inv);
  float s = ADD(hi, step);
  float bp = SUB(s, hi);
  float e = ADD(SUB(hi, SUB(s, bp)), SUB(step, bp));
  float l = ADD(lo, ADD(e, step_lo));
  float h = ADD(s, l);
  l = SUB(l, SUB(h, s));
  *mean = h;
  *comp = l;
  float delta2 = SUB(SUB(t, h), l);
  *m2 = ADD(*m2, MUL(delta, delta2));
  return delta2;
}

// half::bf16::from_f32 (round to nearest even; inputs are finite).
__device__ __forceinline__ uint16_t bf16_from_f32(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
  const uint32_t round_bit = 0x00008000u;
  if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) return (uint16_t)((x >> 16) + 1u);
  return (uint16_t)(x >> 16);
}

// The lowest index of a non-finite value of x[0..n] into *first (an atomic minimum); any such
// value also sets *any_bad to 0 (both start at the i64 maximum).
extern "C" __global__ void swag_first_non_finite(const float* x, uint64_t n, long long* first,
                                                 long long* any_bad) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    if ((__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u) {
      atomicMin(first, (long long)i);
      atomicMin(any_bad, 0LL);
    }
  }
}

// The largest |x| of x[0..n] (finite values) into *out, as bits (an atomic maximum: the bits
// of non-negative floats order as the floats do). A maximum is exact, so it is the CPU's.
extern "C" __global__ void swag_max_abs(const float* x, uint64_t n, unsigned int* out) {
  float m = 0.0f;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    m = fmaxf(m, fabsf(x[i]));
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31u) == 0) atomicMax(out, __float_as_uint(m));
}

// One Welford pass over a parameter. `dev` (nullable) receives the new column; `max_bits`
// (nullable) the largest |column entry| as bits (an f16 column's scale needs it).
#define COLLECT_KERNEL(NAME, T, STORE)                                                           \
  extern "C" __global__ void NAME(float* mean, float* comp, float* m2, const float* theta,       \
                                  T* dev, uint64_t n, float inv, float count,                    \
                                  const long long* bad, unsigned int* max_bits) {                \
    /* A snapshot with a non-finite value anywhere changes nothing. */                           \
    if (*bad != 0x7fffffffffffffffLL) return;                                                    \
    float big = 0.0f;                                                                            \
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;                    \
         i += (uint64_t)gridDim.x * blockDim.x) {                                                \
      float mu = mean[i], c = comp[i], s = m2[i];                                                \
      float d2 = welford_step(&mu, &c, &s, theta[i], inv, count);                                \
      mean[i] = mu;                                                                              \
      comp[i] = c;                                                                               \
      m2[i] = s;                                                                                 \
      if (dev) dev[i] = STORE(d2);                                                               \
      if (max_bits) big = fmaxf(big, fabsf(d2));                                                               \
    }                                                                                            \
    if (max_bits) {                                                                              \
      for (int o = 16; o > 0; o >>= 1) big = fmaxf(big, __shfl_down_sync(0xffffffffu, big, o));  \
      if ((threadIdx.x & 31u) == 0) atomicMax(max_bits, __float_as_uint(big));                   \
    }                                                                                            \
  }

__device__ __forceinline__ float store_f32(float x) { return x; }
COLLECT_KERNEL(swag_collect_f32, float, store_f32)
COLLECT_KERNEL(swag_collect_bf16, uint16_t, bf16_from_f32)

// store::f16_column_scale on the device: a power of two putting the largest |x| in [2^14, 2^15)
// (1 for a zero column), built from the exponent bits, so it is exact and the CPU's.
__device__ __forceinline__ float f16_column_scale(float max_abs) {
  uint32_t bits = __float_as_uint(max_abs);
  if (!(max_abs > 0.0f) || (bits & 0x7f800000u) == 0x7f800000u) return 1.0f;
  int e = (int)((bits >> 23) & 0xffu) - 127 - 14;
  if (e < -126) e = -126;
  return __uint_as_float((uint32_t)(e + 127) << 23);
}

// An f16 column (store::encode_pieces): out = f16(col * (1 / scale)), round to nearest even,
// with the scale from the column's maximum (*max_bits, written by the collection pass) and
// written to *scale_out; counts the nonzero entries stored as zero into *flushed. Does nothing
// when the snapshot was refused.
extern "C" __global__ void swag_encode_f16(const float* col, uint16_t* out, uint64_t n,
                                           const unsigned int* max_bits, float* scale_out,
                                           unsigned long long* flushed, const long long* bad) {
  if (*bad != 0x7fffffffffffffffLL) return;
  const float scale = f16_column_scale(__uint_as_float(*max_bits));
  const float inv = DIV(1.0f, scale);
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    float x = col[i];
    uint16_t q = __half_as_ushort(__float2half_rn(MUL(x, inv)));
    out[i] = q;
    if ((q & 0x7fffu) == 0 && x != 0.0f) atomicAdd(flushed, 1ull);
  }
}

// ---------------------------------------------------------------- sample (kernels::sample)

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen_bf16(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }
__device__ __forceinline__ float widen_f16(uint16_t x) { return __half2float(__ushort_as_half(x)); }

// One SWAG sample of one parameter of `len` coordinates:
//   out = mean + sqrt_scale * (sqrt(max(m2 * inv_n, clamp)) * z1 + acc),
//   acc = extra (if given) or the sum over held rows r of dev[rows[r]][j] * w[r], accumulated
//   four rows at a time as ((a*w0 + b*w1) + (c*w2 + d*w3)), then the remaining rows one by one.
// A warp handles 128 consecutive coordinates: lane t draws the Philox group of coordinates
// 4t..4t+3, and the words are exchanged by shuffles so that each lane then handles the
// coalesced coordinates t, t+32, t+64, t+96.
#define SAMPLE_KERNEL(NAME, T, WIDEN, EARLY)                                                      \
  extern "C" __global__ void NAME(float* out, const float* mean, const float* m2, const T* dev,   \
                                  uint64_t row_stride, const uint32_t* rows, const float* w,      \
                                  uint32_t nrows, const float* extra, uint64_t len,               \
                                  float sqrt_scale, float var_clamp, float inv_n,                 \
                                  uint32_t seed_lo, uint32_t seed_hi, uint32_t param) {           \
    const uint32_t lane = threadIdx.x & 31u;                                                      \
    const uint64_t warps_per_block = blockDim.x >> 5;                                             \
    const uint64_t n_warps = (len + 127) / 128;                                                   \
    for (uint64_t wi = blockIdx.x * warps_per_block + (threadIdx.x >> 5); wi < n_warps;           \
         wi += (uint64_t)gridDim.x * warps_per_block) {                                           \
      const uint64_t base = wi * 128;                                                             \
      uint64_t j[4];                                                                              \
      bool ok[4];                                                                                 \
      float acc[4], mu[4], s2[4];                                                                 \
      _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                             \
        j[k] = base + 32 * k + lane;                                                              \
        ok[k] = j[k] < len;                                                                       \
      }                                                                                           \
      /* EARLY (the diagonal kernel): load before drawing the noise, so that memory latency       \
         overlaps its arithmetic; the low-rank kernels have their rows' loads for that, and       \
         keep the registers. */                                                                   \
      auto load = [&]() {                                                                         \
        _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                           \
          acc[k] = (extra && ok[k]) ? extra[j[k]] : 0.0f;                                         \
          mu[k] = ok[k] ? mean[j[k]] : 0.0f;                                                      \
          s2[k] = ok[k] ? m2[j[k]] : 0.0f;                                                        \
        }                                                                                         \
      };                                                                                          \
      if (EARLY) load();                                                                          \
      const uint64_t g = (base >> 2) + lane;                                                      \
      uint4 words = philox4x32_10(                                                                \
          make_uint4((uint32_t)g, (uint32_t)(g >> 32), param, Z1_STREAM), seed_lo, seed_hi);      \
      float z[4];                                                                                 \
      _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                             \
        const int src = k * 8 + (int)(lane >> 2);                                                 \
        uint32_t x = __shfl_sync(0xffffffffu, words.x, src);                                      \
        uint32_t y = __shfl_sync(0xffffffffu, words.y, src);                                      \
        uint32_t zz = __shfl_sync(0xffffffffu, words.z, src);                                     \
        uint32_t ww = __shfl_sync(0xffffffffu, words.w, src);                                     \
        uint32_t c = lane & 3u;                                                                   \
        z[k] = normal_from_bits(c == 0 ? x : c == 1 ? y : c == 2 ? zz : ww);                      \
      }                                                                                           \
      if (!EARLY) load();                                                                         \
      uint32_t r = 0;                                                                             \
      for (; r + 4 <= nrows; r += 4) {                                                            \
        const T* d0 = dev + rows[r] * row_stride;                                                 \
        const T* d1 = dev + rows[r + 1] * row_stride;                                             \
        const T* d2 = dev + rows[r + 2] * row_stride;                                             \
        const T* d3 = dev + rows[r + 3] * row_stride;                                             \
        const float w0 = w[r], w1 = w[r + 1], w2 = w[r + 2], w3 = w[r + 3];                       \
        _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                           \
          if (ok[k]) {                                                                            \
            float a = WIDEN(d0[j[k]]), b = WIDEN(d1[j[k]]);                                       \
            float c = WIDEN(d2[j[k]]), d = WIDEN(d3[j[k]]);                                       \
            acc[k] = ADD(acc[k], ADD(ADD(MUL(a, w0), MUL(b, w1)), ADD(MUL(c, w2), MUL(d, w3))));  \
          }                                                                                       \
        }                                                                                         \
      }                                                                                           \
      for (; r < nrows; ++r) {                                                                    \
        const T* dr = dev + rows[r] * row_stride;                                                 \
        const float wr = w[r];                                                                    \
        _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                           \
          if (ok[k]) acc[k] = ADD(acc[k], MUL(WIDEN(dr[j[k]]), wr));                              \
        }                                                                                         \
      }                                                                                           \
      _Pragma("unroll") for (int k = 0; k < 4; ++k) {                                             \
        if (ok[k]) {                                                                              \
          float var = fmaxf(MUL(s2[k], inv_n), var_clamp);                                        \
          out[j[k]] = ADD(mu[k], MUL(sqrt_scale, ADD(MUL(SQRT(var), z[k]), acc[k])));             \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
  }

SAMPLE_KERNEL(swag_sample_f32, float, widen, false)
SAMPLE_KERNEL(swag_sample_bf16, uint16_t, widen_bf16, false)
SAMPLE_KERNEL(swag_sample_f16, uint16_t, widen_f16, false)
SAMPLE_KERNEL(swag_sample_diag, float, widen, true)
