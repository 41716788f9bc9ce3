// cblas_sgemm on oneDNN's dnnl_sgemm, to measure oneDNN's GEMMs inside elbo without rebuilding it:
// preloaded, it takes the place of the BLAS library's cblas_sgemm (elbo's only BLAS call on the
// hot path). A measurement tool, not part of the build:
//
//   cc -O2 -shared -fPIC bench/dnnl_cblas_shim.c -o /tmp/libdnnl_cblas.so -ldnnl   (libdnnl-dev)
//   LD_PRELOAD=/tmp/libdnnl_cblas.so build-cpu/elbo bench configs/fashion_mnist.yaml --roofline
//
// BLIS needs no shim (it has its own cblas_sgemm): LD_PRELOAD=.../blis-serial/libblis.so.4.
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>

enum { kRowMajor = 101, kColMajor = 102, kNoTrans = 111 };

void cblas_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha,
                 const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  const char ta = transa == kNoTrans ? 'N' : 'T', tb = transb == kNoTrans ? 'N' : 'T';
  dnnl_status_t rc;
  if (order == kRowMajor) {
    rc = dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {  // column-major C = A B is row-major C^T = B^T A^T
    rc = dnnl_sgemm(tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
  }
  if (rc != dnnl_success) {
    fprintf(stderr, "dnnl_sgemm failed (%d)\n", (int)rc);
    abort();
  }
}
