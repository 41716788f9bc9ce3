// The CPU backend's primitives against independent sums: gemm against double-precision sums
// (every transpose case, ragged and blocked sizes, strides wider than the rows, alpha and beta,
// one BLAS thread and two); im2col against its definition and col2im against the sum that defines
// it, on geometries that take the narrow AVX-512 path, the strided AVX2 path, both or neither.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "core/backend.h"
#include "core/cpu/im2col.h"
#include "core/philox.h"

namespace elbo {
namespace {

struct Case {
  bool ta, tb;
  int M, N, K;
  float alpha, beta;
};

std::vector<float> values(size_t n, uint32_t stream) {
  std::vector<float> v(n);
  const RngKey key = rng_key(5);
  for (size_t i = 0; i < n; ++i)
    v[i] = 2.0f * uniform_open01(
                      philox_draw(key, static_cast<uint32_t>(i), stream, 0, RngStream::Init).v[0]) -
           1.0f;
  return v;
}

// Runs `gemm` on the case with leading dimensions 3 wider than the rows, and checks every element
// of C (and that the padding between rows is untouched) against the double-precision sum.
template <typename Gemm>
void check(const Case& c, Gemm gemm) {
  const int a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int lda = a_cols + 3, ldb = b_cols + 3, ldc = c.N + 3;
  const std::vector<float> A = values(static_cast<size_t>(a_rows) * lda, 1);
  const std::vector<float> B = values(static_cast<size_t>(b_rows) * ldb, 2);
  std::vector<float> C = values(static_cast<size_t>(c.M) * ldc, 3);
  const std::vector<float> C0 = C;
  if (c.beta == 0.0f)  // beta 0 must overwrite, not multiply: NaN in C may not survive
    for (int i = 0; i < c.M; ++i)
      C[static_cast<size_t>(i) * ldc] = std::numeric_limits<float>::quiet_NaN();
  gemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  double worst = 0.0;
  for (int i = 0; i < c.M; ++i) {
    for (int j = 0; j < c.N; ++j) {
      double s = 0.0, scale = 0.0;
      for (int p = 0; p < c.K; ++p) {
        const double a =
            c.ta ? A[static_cast<size_t>(p) * lda + i] : A[static_cast<size_t>(i) * lda + p];
        const double b =
            c.tb ? B[static_cast<size_t>(j) * ldb + p] : B[static_cast<size_t>(p) * ldb + j];
        s += a * b;
        scale += std::fabs(a * b);
      }
      const size_t at = static_cast<size_t>(i) * ldc + j;
      const double want = c.alpha * s + (c.beta == 0.0f ? 0.0 : c.beta * C0[at]);
      // float accumulation: a few ulps of the sum of magnitudes
      const double tol = 1e-6 * (std::fabs(c.alpha) * scale + std::fabs(c.beta * C0[at])) + 1e-30;
      worst = std::max(worst, std::fabs(C[at] - want) / tol);
    }
    for (int j = c.N; j < ldc; ++j) {
      const size_t at = static_cast<size_t>(i) * ldc + j;
      ASSERT_EQ(C[at], C0[at]) << "wrote past row " << i << " at column " << j;
    }
  }
  EXPECT_LT(worst, 1.0) << "ta " << c.ta << " tb " << c.tb << " M " << c.M << " N " << c.N << " K "
                        << c.K << " alpha " << c.alpha << " beta " << c.beta;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      out.push_back({ta, tb, 1, 1, 1, 1.0f, 0.0f});
      out.push_back({ta, tb, 7, 31, 5, 1.0f, 0.0f});      // smaller than one tile
      out.push_back({ta, tb, 13, 37, 300, 0.5f, 1.0f});   // deep K
      out.push_back({ta, tb, 200, 70, 9, -1.5f, 0.25f});  // M crosses a row block
      out.push_back({ta, tb, 9, 3100, 20, 1.0f, 0.0f});   // N crosses a column block, shallow
      out.push_back({ta, tb, 17, 3100, 260, 1.0f, 1.0f});
    }
  return out;
}

TEST(CpuBackend, GemmWithOneThreadAndWithTwo) {
  auto be = make_cpu_backend();
  for (int threads : {1, 2}) {
    configure_cpu_thread(threads);
    for (const Case& c : cases())
      check(c, [&](bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                   const float* B, int ldb, float beta, float* C, int ldc) {
        be->gemm(ta ? Trans::Yes : Trans::No, tb ? Trans::Yes : Trans::No, M, N, K, alpha, A, lda,
                 B, ldb, beta, C, ldc);
      });
  }
  configure_cpu_thread(0);
}

ConvShape conv(int c, int h, int w, int k, int s, int p) {
  ConvShape g{c, h, w, k, s, p, 0, 0};
  g.out_h = (h + 2 * p - k) / s + 1;
  g.out_w = (w + 2 * p - k) / s + 1;
  return g;
}

TEST(CpuBackend, Im2colAndCol2imByDefinition) {
  struct Geometry {
    ConvShape g;
    bool narrow, strided;  // the fast paths that take it, on a CPU that has them
  };
  const std::vector<Geometry> cases{
      {conv(32, 14, 14, 4, 2, 1), true, true}, {conv(1, 28, 28, 4, 2, 1), true, true},
      {conv(3, 9, 7, 3, 2, 1), true, true},    {conv(2, 5, 8, 3, 3, 2), true, false},
      {conv(2, 6, 5, 2, 1, 0), true, true},    {conv(1, 30, 30, 5, 2, 2), true, true},
      {conv(2, 9, 40, 3, 2, 1), false, true},  {conv(1, 6, 33, 1, 1, 0), false, false},
      {conv(1, 5, 20, 3, 1, 1), true, true},   {conv(2, 4, 30, 3, 1, 1), true, true},
      {conv(2, 3, 62, 4, 2, 1), false, true},  {conv(1, 7, 3, 5, 1, 2), true, true},
      // Grids smaller than a vector: reads around a sample's rows reach past the buffer's ends.
      {conv(2, 3, 3, 2, 2, 0), true, true},    {conv(2, 1, 1, 5, 1, 2), true, true}};
  using Im2col = std::function<void(const float*, float*, int, const ConvShape&)>;
  struct Path {
    const char* name;
    bool (*available)(const ConvShape&);
    Im2col im2col, col2im;
  };
  auto be = make_cpu_backend();
  const std::vector<Path> paths{
      {"backend", [](const ConvShape&) { return true; },
       [&](const float* a, float* b, int B, const ConvShape& g) { be->im2col(a, b, B, g); },
       [&](const float* a, float* b, int B, const ConvShape& g) { be->col2im(a, b, B, g); }},
      {"narrow", narrow_conv_available, narrow_im2col, narrow_col2im},
      {"strided", strided_conv_available, strided_im2col, strided_col2im}};
  const int B = 3;
  for (const Geometry& cs : cases) {
    const ConvShape& g = cs.g;
    if (__builtin_cpu_supports("avx512f")) {
      EXPECT_EQ(narrow_conv_available(g), cs.narrow);
    }
    if (__builtin_cpu_supports("avx2")) {
      EXPECT_EQ(strided_conv_available(g), cs.strided);
    }
    const size_t image = static_cast<size_t>(B) * g.channels * g.image();
    const size_t cols = static_cast<size_t>(B) * g.grid(), col = g.col_rows() * cols;
    const std::vector<float> img = values(image, 4), dcol = values(col, 5);
    // The definitions: col entry by entry, and each pixel's sum of the col entries that read it,
    // added in float in (i, j) order, the order every path promises.
    std::vector<float> want_col(col), want_dimg(image, 0.0f);
    for (int ch = 0; ch < g.channels; ++ch)
      for (int i = 0; i < g.kernel; ++i)
        for (int j = 0; j < g.kernel; ++j)
          for (int b = 0; b < B; ++b)
            for (int oy = 0; oy < g.out_h; ++oy)
              for (int ox = 0; ox < g.out_w; ++ox) {
                const size_t at = static_cast<size_t>((ch * g.kernel + i) * g.kernel + j) * cols +
                                  (static_cast<size_t>(b) * g.out_h + oy) * g.out_w + ox;
                const int y = oy * g.stride - g.padding + i, x = ox * g.stride - g.padding + j;
                const bool inside = y >= 0 && y < g.height && x >= 0 && x < g.width;
                const size_t pixel =
                    ((static_cast<size_t>(b) * g.channels + ch) * g.height + y) * g.width + x;
                want_col[at] = inside ? img[pixel] : 0.0f;
                if (inside) want_dimg[pixel] += dcol[at];
              }
    for (const Path& path : paths) {
      if (!path.available(g)) continue;
      // Exactly sized buffers (ASan sees a read or write past them) that start out as garbage.
      std::vector<float> c(col, 9.0f), dimg(image, 9.0f);
      path.im2col(img.data(), c.data(), B, g);
      path.col2im(dcol.data(), dimg.data(), B, g);
      for (size_t i = 0; i < col; ++i)
        ASSERT_EQ(c[i], want_col[i])
            << path.name << " im2col, C " << g.channels << " " << g.height << "x" << g.width
            << " k " << g.kernel << " s " << g.stride << ", entry " << i;
      for (size_t i = 0; i < image; ++i)
        ASSERT_EQ(dimg[i], want_dimg[i])
            << path.name << " col2im, C " << g.channels << " " << g.height << "x" << g.width
            << " k " << g.kernel << " s " << g.stride << ", pixel " << i;
    }
  }
}

}  // namespace
}  // namespace elbo
