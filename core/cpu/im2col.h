// im2col and col2im for narrow images, with AVX-512: one image row fits in two vectors (width
// <= 32) and one row of the grid in one (out_w <= 16), as in every layer of a 28 x 28 model. Each
// row of a window is then one two-source permute of the image row (stride, offset and padding in
// the index vector) and one masked store, instead of a loop over a handful of elements; col2im is
// the same permute inverted, added into the image row. Same layouts and results as the CPU
// backend's general loops (col2im adds in the same order).
#pragma once

#include "core/backend.h"

namespace elbo {

// True when the narrow path applies to g on this CPU.
bool narrow_conv_available(const ConvShape& g);
void narrow_im2col(const float* image, float* col, int B, const ConvShape& g);
void narrow_col2im(const float* col, float* image, int B, const ConvShape& g);

// im2col and col2im for strides 1 and 2 with AVX2, for CPUs without AVX-512 (and images too wide
// for the narrow path). im2col copies each image plane once into a zero-bordered buffer, so every
// window row is 8 output columns per unconditional load (stride 1) or pair of loads and one
// deinterleave (stride 2), stored whole. col2im sums each image row in registers, split by column
// parity for stride 2, over the window entries that land on it, in the general loops' (i, j)
// order (same results), and stores it once. Padded image rows of up to 32 columns for stride 1
// and 64 for stride 2.
bool strided_conv_available(const ConvShape& g);
void strided_im2col(const float* image, float* col, int B, const ConvShape& g);
void strided_col2im(const float* col, float* image, int B, const ConvShape& g);

}  // namespace elbo
