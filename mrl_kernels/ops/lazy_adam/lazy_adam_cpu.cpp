// LazyAdam's row pass (mrl_kernels::lazy_adam_cpp, its schema in spec.py beside
// this file), in the cpp backend's library.
//
// One Adam step on the rows `indices` (unique) of a table, with their gradient
// rows `values`: each row's moments and weights are read and written once, in
// one pass (rows run in parallel; a row's arithmetic is that of torch's
// SparseAdam). Random rows of a large table are fetched kPrefetch rows ahead.

#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

template <typename T>
void lazy_adam_impl(Tensor& param, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& indices, const Tensor& values,
                    double beta1, double beta2, double eps, double step_size) {
  const int64_t R = indices.size(0), D = param.size(1);
  const int64_t* ids = indices.data_ptr<int64_t>();
  T* w = param.data_ptr<T>();
  T* m = exp_avg.data_ptr<T>();
  T* v = exp_avg_sq.data_ptr<T>();
  const T* g = values.data_ptr<T>();
  const T b1 = static_cast<T>(1 - beta1), b2 = static_cast<T>(1 - beta2), e = static_cast<T>(eps),
          lr = static_cast<T>(step_size);
  at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r + kPrefetch < end) {
        const int64_t ahead = ids[r + kPrefetch] * D;
        prefetch_row(w + ahead, D);
        prefetch_row(m + ahead, D);
        prefetch_row(v + ahead, D);
      }
      T* wr = w + ids[r] * D;
      T* mr = m + ids[r] * D;
      T* vr = v + ids[r] * D;
      const T* gr = g + r * D;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) {
        mr[k] += (gr[k] - mr[k]) * b1;
        vr[k] += (gr[k] * gr[k] - vr[k]) * b2;
        wr[k] -= lr * (mr[k] / (std::sqrt(vr[k]) + e));
      }
    }
  });
}

void lazy_adam(Tensor param, Tensor exp_avg, Tensor exp_avg_sq, const Tensor& indices, const Tensor& values,
               double beta1, double beta2, double eps, double step_size) {
  check_cpu_float(param, "param");
  for (const Tensor* t : {&param, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->dim() == 2 && t->is_contiguous() && t->scalar_type() == param.scalar_type() &&
                    t->sizes() == param.sizes(),
                "lazy_adam: param, exp_avg and exp_avg_sq must be contiguous (N, D) tables of one dtype");
  }
  const Tensor ids = indices.to(at::kLong).contiguous(), rows = values.to(param.scalar_type()).contiguous();
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == ids.size(0) && rows.size(1) == param.size(1),
              "lazy_adam: values must hold one (D,) row per index");
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "lazy_adam_cpu", [&] {
    lazy_adam_impl<scalar_t>(param, exp_avg, exp_avg_sq, ids, rows, beta1, beta2, eps, step_size);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("lazy_adam_cpp", &lazy_adam); }
