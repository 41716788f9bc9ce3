// packed_sgemm: the usual three levels of blocking around a register kernel. B is packed into
// panels of kKc x 32 (one panel stays in L1 while the kernel sweeps down the rows), A into panels
// of 8 x kKc (a block of kMc rows stays in L2); the kernel keeps an 8 x 32 tile of C in 16
// registers and adds one rank-1 update per k. Packing reads op(A) and op(B) in whichever
// orientation the caller has, so all four transpose cases share one kernel. Padding rows and
// columns of the panels are zero and never stored.
#include "core/cpu/gemm.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ELBO_PACKED_SGEMM 1
#endif

namespace elbo {

#if ELBO_PACKED_SGEMM

namespace {

constexpr int kMr = 8, kNr = 32;
constexpr int kKc = 256;   // depth of one packed block: a 32 KiB B panel for L1
constexpr int kMc = 192;   // rows of A per block: 192 KiB of packed A for L2
constexpr int kNc = 3072;  // columns of B per block: 3 MiB of packed B
constexpr size_t kRowOrderFloats = size_t{1} << 18;  // packed B of at most 1 MiB: see below

struct Workspace {
  float* a = nullptr;
  float* b = nullptr;
  Workspace()
      : a(static_cast<float*>(::operator new[](sizeof(float) * kMc * kKc, std::align_val_t{64}))),
        b(static_cast<float*>(::operator new[](sizeof(float) * kKc * kNc, std::align_val_t{64}))) {}
  ~Workspace() {
    ::operator delete[](a, std::align_val_t{64});
    ::operator delete[](b, std::align_val_t{64});
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// One per thread, allocated on the thread's first GEMM: a fixed 3.2 MiB whatever the shapes.
Workspace& workspace() {
  thread_local Workspace w;
  return w;
}

// dst[q * ldd + r] = src[r * lds + q] for an 8 x 8 block: rows of src become columns of dst.
__attribute__((target("avx2"))) inline void transpose_8x8(const float* src, size_t lds, float* dst,
                                                          size_t ldd) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    const int b = 4 * i;
    r[b] = _mm256_shuffle_ps(t[b], t[b + 2], 0x44);
    r[b + 1] = _mm256_shuffle_ps(t[b], t[b + 2], 0xee);
    r[b + 2] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0x44);
    r[b + 3] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// dst[q * ldd + r] = src[r * lds + q] for r < rows, q < cols; zero for rows <= r < dst_rows.
// Full 8 x 8 blocks go through registers, the ragged edges element by element.
__attribute__((target("avx2"))) void transpose_block(const float* src, size_t lds, int rows,
                                                     int cols, float* dst, size_t ldd,
                                                     int dst_rows) {
  int r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int q = 0;
    for (; q + 8 <= cols; q += 8) transpose_8x8(src + r0 * lds + q, lds, dst + q * ldd + r0, ldd);
    for (; q < cols; ++q)
      for (int r = r0; r < r0 + 8; ++r) dst[q * ldd + r] = src[r * lds + q];
  }
  for (int q = 0; q < cols; ++q) {
    for (int r = r0; r < rows; ++r) dst[q * ldd + r] = src[r * lds + q];
    for (int r = rows; r < dst_rows; ++r) dst[q * ldd + r] = 0.0f;
  }
}

// Panels of op(A)[i0 .. i0+mc, p0 .. p0+kc]: for each group of 8 rows, kc columns of 8.
void pack_a(bool trans, const float* A, int lda, int i0, int mc, int p0, int kc, float* dst) {
  for (int ir = 0; ir < mc; ir += kMr) {
    const int m = std::min(kMr, mc - ir);
    float* panel = dst + static_cast<size_t>(ir) * kc;
    if (trans) {  // op(A)(i, p) = A[p, i]: each k is a contiguous run of rows
      for (int p = 0; p < kc; ++p) {
        const float* src = A + static_cast<size_t>(p0 + p) * lda + i0 + ir;
        float* d = panel + static_cast<size_t>(p) * kMr;
        int r = 0;
        for (; r < m; ++r) d[r] = src[r];
        for (; r < kMr; ++r) d[r] = 0.0f;
      }
    } else {  // rows of A become the panel's columns
      transpose_block(A + static_cast<size_t>(i0 + ir) * lda + p0, static_cast<size_t>(lda), m, kc,
                      panel, kMr, kMr);
    }
  }
}

// Panels of op(B)[p0 .. p0+kc, j0 .. j0+nc]: for each group of 32 columns, kc rows of 32.
void pack_b(bool trans, const float* B, int ldb, int p0, int kc, int j0, int nc, float* dst) {
  for (int jr = 0; jr < nc; jr += kNr) {
    const int n = std::min(kNr, nc - jr);
    float* panel = dst + static_cast<size_t>(jr) * kc;
    if (!trans) {  // rows of B are contiguous
      for (int p = 0; p < kc; ++p) {
        const float* src = B + static_cast<size_t>(p0 + p) * ldb + j0 + jr;
        float* d = panel + static_cast<size_t>(p) * kNr;
        if (n == kNr) {
          std::memcpy(d, src, sizeof(float) * kNr);
        } else {
          int c = 0;
          for (; c < n; ++c) d[c] = src[c];
          for (; c < kNr; ++c) d[c] = 0.0f;
        }
      }
    } else {  // op(B)(p, j) = B[j, p]: rows of B become the panel's columns
      transpose_block(B + static_cast<size_t>(j0 + jr) * ldb + p0, static_cast<size_t>(ldb), n, kc,
                      panel, kNr, kNr);
    }
  }
}

// C tile [m <= 8, n <= 32] = alpha a b + beta C; beta == 0 does not read C.
__attribute__((target("avx512f"))) void kernel_8x32(int kc, const float* a, const float* b,
                                                    float* C, int ldc, int m, int n, float alpha,
                                                    float beta) {
  __m512 acc[kMr][2];
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
    }
    a += kMr;
    b += kNr;
  }
  const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? __mmask16(0xffff) : n > 16 ? __mmask16((1u << (n - 16)) - 1) : 0;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < m; ++r) {
    float* c = C + static_cast<size_t>(r) * ldc;
    __m512 v0 = _mm512_mul_ps(va, acc[r][0]), v1 = _mm512_mul_ps(va, acc[r][1]);
    if (beta != 0.0f) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

}  // namespace

bool packed_sgemm_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

void packed_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {  // C = beta C
    for (int i = 0; i < M; ++i) {
      float* c = C + static_cast<size_t>(i) * ldc;
      for (int j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    }
    return;
  }
  Workspace& w = workspace();
  for (int jc = 0; jc < N; jc += kNc) {
    const int nc = std::min(kNc, N - jc);
    for (int pc = 0; pc < K; pc += kKc) {
      const int kc = std::min(kKc, K - pc);
      const float beta_here = pc == 0 ? beta : 1.0f;  // later blocks add onto the first
      pack_b(trans_b, B, ldb, pc, kc, jc, nc, w.b);
      for (int ic = 0; ic < M; ic += kMc) {
        const int mc = std::min(kMc, M - ic);
        pack_a(trans_a, A, lda, ic, mc, pc, kc, w.a);
        auto tile = [&](int ir, int jr) {
          kernel_8x32(kc, w.a + static_cast<size_t>(ir) * kc, w.b + static_cast<size_t>(jr) * kc,
                      C + static_cast<size_t>(ic + ir) * ldc + jc + jr, ldc, std::min(kMr, mc - ir),
                      std::min(kNr, nc - jr), alpha, beta_here);
        };
        if (static_cast<size_t>(kc) * nc <= kRowOrderFloats) {
          // A shallow packed B fits in L2: sweep each row of tiles, so that C is written row by
          // row, in the order the prefetcher follows (it dominates when K is small).
          for (int ir = 0; ir < mc; ir += kMr)
            for (int jr = 0; jr < nc; jr += kNr) tile(ir, jr);
        } else {
          for (int jr = 0; jr < nc; jr += kNr)
            for (int ir = 0; ir < mc; ir += kMr) tile(ir, jr);
        }
      }
    }
  }
}

#else

bool packed_sgemm_available() { return false; }
void packed_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float,
                  float*, int) {}

#endif

}  // namespace elbo
