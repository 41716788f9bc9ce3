// A single-thread SGEMM for x86-64 CPUs with AVX-512F: packed panels and an 8 x 32 register
// kernel. It exists because the BLAS a system ships may not recognise the CPU it runs on (OpenBLAS
// 0.3.21 treats a CPU model it does not know as a Prescott and runs its SSE3 kernels, about a
// quarter of the speed), and the conv model's step is mostly GEMMs.
#pragma once

namespace elbo {

// True when this CPU can run packed_sgemm (AVX-512F, checked once at run time).
bool packed_sgemm_available();

// C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, row-major, as cblas_sgemm with CblasRowMajor.
// beta == 0 overwrites C without reading it. Only when packed_sgemm_available().
void packed_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace elbo
