#include "core/cpu/im2col.h"

#include <cstddef>
#include <vector>

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

namespace {

constexpr int kMaxChunks = 4;  // 8-lane chunks of one padded image row (per column parity)

// Chunks of 8 that hold ceil((width + 2 padding) / stride) padded columns.
int row_chunks(const ConvShape& g) {
  const int per_phase = (g.width + 2 * g.padding + g.stride - 1) / g.stride;
  return (per_phase + 7) / 8;
}

__attribute__((target("avx2"))) void store_first(float* dst, __m256 v, int n) {
  if (n >= 8) return _mm256_storeu_ps(dst, v);
  __m128 part = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(dst, part);
    part = _mm256_extractf128_ps(v, 1);
    dst += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(dst), part);
    part = _mm_movehl_ps(part, part);
    dst += 2;
    n -= 2;
  }
  if (n == 1) _mm_store_ss(dst, part);
}

// Lanes l of 8 whose grid column 8 q + l - shift lies in [0, out_w), as an AND mask.
__attribute__((target("avx2"))) __m256 lane_mask(int q, int shift, int out_w) {
  alignas(32) int bits[8];
  for (int l = 0; l < 8; ++l) {
    const int ox = 8 * q + l - shift;
    bits[l] = ox >= 0 && ox < out_w ? -1 : 0;
  }
  return _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(bits)));
}

// 8 window entries of consecutive grid columns, from a padded row that starts at src.
template <int stride>
__attribute__((target("avx2"))) inline __m256 window_vector(const float* src) {
  if (stride == 1) return _mm256_loadu_ps(src);
  const __m256 lo = _mm256_loadu_ps(src), hi = _mm256_loadu_ps(src + 8);
  const __m256 pairs = _mm256_shuffle_ps(lo, hi, 0x88);  // a0 a2 b0 b2 | a4 a6 b4 b6
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(pairs), 0xd8));
}

// One sample's segment of a col row: out_h grid rows of ow columns; grid row oy reads the padded
// row at src + oy stride pw (the window's offset is in src already). Rows go in order: a
// whole-vector store that runs past a grid row's end writes into the next rows of the segment,
// which overwrite it; a store that would leave the segment is cut to size.
template <int stride>
__attribute__((target("avx2"))) void window_rows(const float* src, int pw, float* dst, int out_h,
                                                 int ow, int chunks, int last) {
  const size_t step = static_cast<size_t>(stride) * pw;
  const int grid = out_h * ow;
  for (int oy = 0; oy < out_h; ++oy, src += step, dst += ow) {
    for (int q = 0; q + 1 < chunks; ++q)
      _mm256_storeu_ps(dst + 8 * q, window_vector<stride>(src + 8 * stride * q));
    const __m256 v = window_vector<stride>(src + 8 * stride * (chunks - 1));
    if ((oy + 1) * ow + 8 - last <= grid)  // what runs past the row stays in the segment
      _mm256_storeu_ps(dst + 8 * (chunks - 1), v);
    else
      store_first(dst + 8 * (chunks - 1), v, last);
  }
}

}  // namespace

bool strided_conv_available(const ConvShape& g) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 && (g.stride == 1 || g.stride == 2) && g.kernel <= kMaxKernel &&
         row_chunks(g) <= kMaxChunks;
}

__attribute__((target("avx2"))) void strided_im2col(const float* image, float* col, int B,
                                                    const ConvShape& g) {
  const int k = g.kernel, s = g.stride, ow = g.out_w, grid = g.grid();
  const int chunks = (ow + 7) / 8;
  // The zero-bordered planes of one channel, one per sample: every read below, 8 (stride 1) or
  // 16 (stride 2) floats from column j + 8 s q of a padded row, lies inside one. Only their
  // interiors change from channel to channel.
  const int pw = 8 * s * chunks + k, ph = g.height + 2 * g.padding;
  const size_t size = static_cast<size_t>(pw) * ph;
  thread_local std::vector<float> buffers;
  buffers.assign(static_cast<size_t>(B) * size, 0.0f);
  const int out_h = g.out_h;
  const size_t cols = static_cast<size_t>(B) * grid;
  const int last = ow - 8 * (chunks - 1);  // columns in the last chunk of a grid row
  for (int c = 0; c < g.channels; ++c) {
    for (int b = 0; b < B; ++b) {
      const float* plane = image + (static_cast<size_t>(b) * g.channels + c) * g.image();
      float* padded = buffers.data() + b * size;
      for (int y = 0; y < g.height; ++y) {
        float* row = padded + static_cast<size_t>(y + g.padding) * pw + g.padding;
        for (int x = 0; x < g.width; ++x) row[x] = plane[static_cast<size_t>(y) * g.width + x];
      }
      if (c + 1 < g.channels)  // the next channel's plane, while this channel's rows are written
        for (int at = 0; at < g.image(); at += 16)
          _mm_prefetch(reinterpret_cast<const char*>(plane + g.image() + at), _MM_HINT_T0);
    }
    // Each col row is written start to end, one stream at a time.
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        float* dst = col + static_cast<size_t>((c * k + i) * k + j) * cols;
        for (int b = 0; b < B; ++b, dst += grid) {
          const float* src = buffers.data() + b * size + static_cast<size_t>(i) * pw + j;
          if (s == 1)
            window_rows<1>(src, pw, dst, out_h, ow, chunks, last);
          else
            window_rows<2>(src, pw, dst, out_h, ow, chunks, last);
        }
      }
  }
}

namespace {

// One image plane of col2im: each image row summed over the window entries that land on it, as
// `stride` x `chunks` vectors of padded columns m stride + phase, then interleaved and stored.
// col + from is grid row oy of window entry (i, j) of this plane; `edge` loads check the bounds
// of col's [0, end) (planes near either end of the buffer read past it otherwise).
template <int stride, int chunks, bool edge>
__attribute__((target("avx2"))) void col2im_plane(const float* col, ptrdiff_t base, ptrdiff_t end,
                                                  ptrdiff_t cols, float* plane, const ConvShape& g,
                                                  const __m256 (*mask)[kMaxKernel]) {
  const int k = g.kernel, ow = g.out_w, out_h = g.out_h, pad = g.padding, width = g.width;
  for (int y = 0; y < g.height; ++y) {
    __m256 acc[stride][chunks];
    for (int phase = 0; phase < stride; ++phase)
      for (int q = 0; q < chunks; ++q) acc[phase][q] = _mm256_setzero_ps();
    for (int i = 0; i < k; ++i) {
      const int t = y + pad - i;  // = oy stride
      if (t < 0 || t % stride != 0 || t / stride >= out_h) continue;
      ptrdiff_t seg = base + i * k * cols + (t / stride) * ow;
      for (int j = 0; j < k; j += stride, seg += stride * cols)
        for (int phase = 0; phase < stride && j + phase < k; ++phase)
          for (int q = 0; q < chunks; ++q) {
            const int shift = j / stride;
            const ptrdiff_t from = seg + phase * cols + 8 * q - shift;
            __m256 v;
            if (!edge || (from >= 0 && from + 8 <= end)) {
              v = _mm256_loadu_ps(col + from);
            } else {  // only the lanes inside the buffer
              alignas(32) float lanes[8] = {};
              for (int l = 0; l < 8; ++l)
                if (from + l >= 0 && from + l < end) lanes[l] = col[from + l];
              v = _mm256_load_ps(lanes);
            }
            acc[phase][q] = _mm256_add_ps(acc[phase][q], _mm256_and_ps(v, mask[q][shift]));
          }
    }
    alignas(32) float padded_row[8 * stride * chunks];
    for (int q = 0; q < chunks; ++q) {
      if (stride == 1) {
        _mm256_store_ps(padded_row + 8 * q, acc[0][q]);
      } else {  // interleave even and odd columns
        const __m256 lo = _mm256_unpacklo_ps(acc[0][q], acc[stride - 1][q]);  // e0 o0 e1 o1 | e4 ..
        const __m256 hi = _mm256_unpackhi_ps(acc[0][q], acc[stride - 1][q]);  // e2 o2 e3 o3 | e6 ..
        _mm256_store_ps(padded_row + 16 * q, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_store_ps(padded_row + 16 * q + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
      }
    }
    float* row = plane + static_cast<size_t>(y) * width;
    for (int x = 0; x < width; ++x) row[x] = padded_row[x + pad];
  }
}

template <int stride, int chunks>
__attribute__((target("avx2"))) void col2im_planes(const float* col, float* image, int B,
                                                   const ConvShape& g) {
  const int k = g.kernel, grid = g.grid();
  const ptrdiff_t cols = ptrdiff_t{B} * grid, end = ptrdiff_t{g.col_rows()} * cols;
  // Padded column m stride + phase takes grid column m - j / stride of window column j (phase
  // j % stride): one load from 8 q - j / stride floats into the grid row, its lanes outside the
  // row masked to zero.
  __m256 mask[chunks][kMaxKernel];
  for (int q = 0; q < chunks; ++q)
    for (int t = 0; t * stride < k; ++t) mask[q][t] = lane_mask(q, t, g.out_w);
  // A plane's loads start up to (k - 1) / stride floats before its first grid row and end up to
  // 8 chunks floats after its last row starts: near the buffer's ends (and, for grids smaller
  // than a vector, in more planes than the first and the last) they are checked.
  const ptrdiff_t before = (k - 1) / stride, after = ptrdiff_t{k * k - 1} * cols +
                                                     ptrdiff_t{g.out_h - 1} * g.out_w + 8 * chunks;
  for (int c = 0; c < g.channels; ++c)
    for (int b = 0; b < B; ++b) {
      float* plane = image + (static_cast<size_t>(b) * g.channels + c) * g.image();
      const ptrdiff_t base = ptrdiff_t{c} * k * k * cols + ptrdiff_t{b} * grid;
      const bool edge = base < before || base + after > end;
      if (edge)
        col2im_plane<stride, chunks, true>(col, base, end, cols, plane, g, mask);
      else
        col2im_plane<stride, chunks, false>(col, base, end, cols, plane, g, mask);
    }
}

template <int stride>
void col2im_by_chunks(const float* col, float* image, int B, const ConvShape& g) {
  switch (row_chunks(g)) {
    case 1:
      return col2im_planes<stride, 1>(col, image, B, g);
    case 2:
      return col2im_planes<stride, 2>(col, image, B, g);
    default:
      return col2im_planes<stride, kMaxChunks>(col, image, B, g);
  }
}

}  // namespace

void strided_col2im(const float* col, float* image, int B, const ConvShape& g) {
  if (g.stride == 1) return col2im_by_chunks<1>(col, image, B, g);
  col2im_by_chunks<2>(col, image, B, g);
}

#else

bool narrow_conv_available(const ConvShape&) { return false; }
void narrow_im2col(const float*, float*, int, const ConvShape&) {}
void narrow_col2im(const float*, float*, int, const ConvShape&) {}
bool strided_conv_available(const ConvShape&) { return false; }
void strided_im2col(const float*, float*, int, const ConvShape&) {}
void strided_col2im(const float*, float*, int, const ConvShape&) {}

#endif

}  // namespace elbo
