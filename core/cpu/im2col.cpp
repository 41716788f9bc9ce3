#include "core/cpu/im2col.h"

#include <cstddef>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ELBO_NARROW_CONV 1
#endif

namespace elbo {

#if ELBO_NARROW_CONV

namespace {

constexpr int kMaxKernel = 16;

__mmask16 low_bits(int n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}

// Column offset j of the window: grid column ox reads image column ox stride + j - padding.
int image_x(const ConvShape& g, int ox, int j) { return ox * g.stride + j - g.padding; }

}  // namespace

bool narrow_conv_available(const ConvShape& g) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return g.width <= 32 && g.out_w <= 16 && g.kernel <= kMaxKernel && avx512;
}

__attribute__((target("avx512f"))) void narrow_im2col(const float* image, float* col, int B,
                                                      const ConvShape& g) {
  const int k = g.kernel, ow = g.out_w, grid = g.grid();
  const size_t cols = static_cast<size_t>(B) * grid;
  const __mmask16 out_mask = low_bits(ow), lo_mask = low_bits(g.width),
                  hi_mask = low_bits(g.width - 16);
  // Per window column j: which image column each grid column reads, and which lie inside.
  __m512i idx[kMaxKernel];
  __mmask16 inside[kMaxKernel];
  for (int j = 0; j < k; ++j) {
    alignas(64) int lane[16];
    unsigned bits = 0;
    for (int ox = 0; ox < 16; ++ox) {
      const int x = image_x(g, ox, j);
      const bool in = ox < ow && x >= 0 && x < g.width;
      lane[ox] = in ? x : 0;
      bits |= in ? 1u << ox : 0u;
    }
    idx[j] = _mm512_load_si512(lane);
    inside[j] = static_cast<__mmask16>(bits);
  }
  for (int c = 0; c < g.channels; ++c)
    for (int b = 0; b < B; ++b) {
      const float* plane = image + (static_cast<size_t>(b) * g.channels + c) * g.image();
      for (int i = 0; i < k; ++i)
        for (int j = 0; j < k; ++j) {
          float* dst =
              col + static_cast<size_t>((c * k + i) * k + j) * cols + static_cast<size_t>(b) * grid;
          for (int oy = 0; oy < g.out_h; ++oy) {
            const int y = oy * g.stride - g.padding + i;
            __m512 v = _mm512_setzero_ps();
            if (y >= 0 && y < g.height) {
              const float* row = plane + static_cast<size_t>(y) * g.width;
              v = _mm512_maskz_permutex2var_ps(inside[j], _mm512_maskz_loadu_ps(lo_mask, row),
                                               idx[j], _mm512_maskz_loadu_ps(hi_mask, row + 16));
            }
            _mm512_mask_storeu_ps(dst + static_cast<size_t>(oy) * ow, out_mask, v);
          }
        }
    }
}

__attribute__((target("avx512f"))) void narrow_col2im(const float* col, float* image, int B,
                                                      const ConvShape& g) {
  const int k = g.kernel, ow = g.out_w, grid = g.grid();
  const size_t cols = static_cast<size_t>(B) * grid;
  const __mmask16 out_mask = low_bits(ow), lo_mask = low_bits(g.width),
                  hi_mask = low_bits(g.width - 16);
  // The inverse of im2col's permute: image column x takes grid column (x + padding - j) / stride
  // where that divides and lies in the grid.
  __m512i lo_idx[kMaxKernel], hi_idx[kMaxKernel];
  __mmask16 lo_from[kMaxKernel], hi_from[kMaxKernel];
  for (int j = 0; j < k; ++j) {
    alignas(64) int lane[32] = {};
    unsigned bits = 0;
    for (int ox = 0; ox < ow; ++ox) {
      const int x = image_x(g, ox, j);
      if (x < 0 || x >= g.width) continue;
      lane[x] = ox;
      bits |= 1u << x;
    }
    lo_idx[j] = _mm512_load_si512(lane);
    hi_idx[j] = _mm512_load_si512(lane + 16);
    lo_from[j] = static_cast<__mmask16>(bits & 0xffffu);
    hi_from[j] = static_cast<__mmask16>(bits >> 16);
  }
  // Each image row is summed in registers over every (i, j) window entry that lands on it, in
  // the (i, j) order of the general loops, and stored once.
  for (int c = 0; c < g.channels; ++c)
    for (int b = 0; b < B; ++b) {
      float* plane = image + (static_cast<size_t>(b) * g.channels + c) * g.image();
      const float* src =
          col + static_cast<size_t>(c * k * k) * cols + static_cast<size_t>(b) * grid;
      for (int y = 0; y < g.height; ++y) {
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int i = 0; i < k; ++i) {
          const int t = y + g.padding - i;  // = oy stride
          if (t < 0 || t % g.stride != 0 || t / g.stride >= g.out_h) continue;
          const float* seg =
              src + static_cast<size_t>(i * k) * cols + static_cast<size_t>(t / g.stride) * ow;
          for (int j = 0; j < k; ++j) {
            const __m512 v = _mm512_maskz_loadu_ps(out_mask, seg + static_cast<size_t>(j) * cols);
            lo = _mm512_add_ps(lo, _mm512_maskz_permutexvar_ps(lo_from[j], lo_idx[j], v));
            hi = _mm512_add_ps(hi, _mm512_maskz_permutexvar_ps(hi_from[j], hi_idx[j], v));
          }
        }
        float* row = plane + static_cast<size_t>(y) * g.width;
        _mm512_mask_storeu_ps(row, lo_mask, lo);
        _mm512_mask_storeu_ps(row + 16, hi_mask, hi);
      }
    }
}

#else

bool narrow_conv_available(const ConvShape&) { return false; }
void narrow_im2col(const float*, float*, int, const ConvShape&) {}
void narrow_col2im(const float*, float*, int, const ConvShape&) {}

#endif

}  // namespace elbo
