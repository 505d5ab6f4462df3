// CPU kernel of nested_als_solve (mrl_kernels::nested_als_solve_cpp), mirroring
// reference.py beside this file; its schema is defined from spec.py (this file
// only implements it).
//
// Rows run in parallel, each its own conjugate-gradient solve (implicit's
// solver, fixed step count, warm start). A product A v is the shared Gram part
// (a D x D matrix-vector product) plus, for each observed item y of the row, its
// nested part in one pass over D: the segment dot products <y, v> between
// consecutive widths, summed into each level's prefix score s_l; then
// t_l = sum_{l' >= l} c_l' s_l' (c_l = w_l (alpha_l - 1), the observed part's
// mask), and y's segment l is added scaled by t_l. The first residual b - A x is
// summed item by item, (sum_{l' >= l} w_l' alpha_l' - t_l) y on segment l, as
// implicit does. Accumulation in T (float32 or float64), like the reference.

#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

constexpr double kTolerance = 1e-20;  // reference.py's CG_TOLERANCE

template <typename T>
struct Problem {
  Rows<T> other;
  const T* gram;  // (D, D), row-major
  const int64_t* indptr;
  const int64_t* indices;
  std::vector<int64_t> bounds;  // 0 = d_0 < d_1 < ... < d_L = D: the level segments
  std::vector<T> coefs;         // c_l = w_l (alpha_l - 1)
  std::vector<T> target;        // sum_{l' >= l} w_l' alpha_l': b's weight on segment l
  int64_t D;
};

// For each observed item y of row r: its nested score of v per segment,
// t_l = sum_{l' >= l} c_l' <y[:d_l'], v[:d_l']>, and then out[segment l] += coef(l, t_l) y
// (one pass over D for the scores, one for the update).
template <typename T, typename Coef>
void observed_part(const Problem<T>& pb, int64_t r, const T* v, T* out, std::vector<T>& level, Coef coef) {
  const int64_t L = static_cast<int64_t>(pb.coefs.size());
  for (int64_t e = pb.indptr[r]; e < pb.indptr[r + 1]; ++e) {
    const T* y = pb.other[pb.indices[e]];
    T running = 0;
    for (int64_t l = 0; l < L; ++l) {
      running += dot(y + pb.bounds[l], v + pb.bounds[l], pb.bounds[l + 1] - pb.bounds[l]);
      level[l] = pb.coefs[l] * running;
    }
    T t = 0;
    for (int64_t l = L - 1; l >= 0; --l) {
      t += level[l];
      const T scale = coef(l, t);
#pragma omp simd
      for (int64_t j = pb.bounds[l]; j < pb.bounds[l + 1]; ++j) out[j] += scale * y[j];
    }
  }
}

// out = sign * gram v (gram symmetric: a sum of its rows scaled by v)
template <typename T>
void gram_part(const Problem<T>& pb, const T* v, T* out, T sign) {
  const int64_t D = pb.D;
  for (int64_t j = 0; j < D; ++j) out[j] = 0;
  for (int64_t k = 0; k < D; ++k) {
    const T scale = sign * v[k];
    const T* g = pb.gram + k * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) out[j] += scale * g[j];
  }
}

template <typename T>
void solve_row(const Problem<T>& pb, int64_t r, T* x, int64_t cg_steps, std::vector<T>& work) {
  const int64_t D = pb.D, L = static_cast<int64_t>(pb.coefs.size());
  if (pb.indptr[r] == pb.indptr[r + 1]) {  // no observed item: the solution is zero
    for (int64_t j = 0; j < D; ++j) x[j] = 0;
    return;
  }
  T* res = work.data();
  T* p = res + D;
  T* ap = p + D;
  std::vector<T> level(L);
  // r = b - A x, entry by entry (b and A x apart would cancel near the solution)
  gram_part(pb, x, res, T(-1));
  observed_part(pb, r, x, res, level, [&](int64_t l, T t) { return pb.target[l] - t; });
  for (int64_t j = 0; j < D; ++j) p[j] = res[j];
  T rs = dot(res, res, D);
  for (int64_t step = 0; step < cg_steps; ++step) {
    if (rs < kTolerance) break;  // NaN goes on, to the output
    gram_part(pb, p, ap, T(1));
    observed_part(pb, r, p, ap, level, [](int64_t, T t) { return t; });
    const T a = rs / dot(p, ap, D);
    for (int64_t j = 0; j < D; ++j) {
      x[j] += a * p[j];
      res[j] -= a * ap[j];
    }
    const T rs_new = dot(res, res, D);
    for (int64_t j = 0; j < D; ++j) p[j] = res[j] + (rs_new / rs) * p[j];
    rs = rs_new;
  }
}

Tensor nested_als_solve(const Tensor& factors, const Tensor& other, const Tensor& gram, const Tensor& indptr,
                        const Tensor& indices, at::IntArrayRef dims, const Tensor& weights, const Tensor& alphas,
                        int64_t cg_steps) {
  check_cpu_float(factors, "factors");
  TORCH_CHECK(other.scalar_type() == factors.scalar_type() && gram.scalar_type() == factors.scalar_type(),
              "other and gram must have factors' dtype");
  Tensor solved = factors.contiguous().clone();
  const Tensor items = rowwise(other), g = gram.contiguous();
  const Tensor offsets = indptr.to(at::kLong).contiguous(), ids = indices.to(at::kLong).contiguous();
  const Tensor w = weights.to(at::kDouble).contiguous(), a = alphas.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(factors.scalar_type(), "nested_als_solve", [&] {
    using T = scalar_t;
    Problem<T> pb{rows_of<T>(items), g.data_ptr<T>(), offsets.data_ptr<int64_t>(), ids.data_ptr<int64_t>(),
                  {0}, {}, {}, factors.size(1)};
    for (const int64_t d : dims) pb.bounds.push_back(d);
    const double *wp = w.data_ptr<double>(), *ap = a.data_ptr<double>();
    for (size_t l = 0; l < dims.size(); ++l) pb.coefs.push_back(static_cast<T>(wp[l] * (ap[l] - 1)));
    pb.target.assign(dims.size(), 0);
    double total = 0;
    for (int64_t l = static_cast<int64_t>(dims.size()) - 1; l >= 0; --l)
      pb.target[l] = static_cast<T>(total += wp[l] * ap[l]);
    T* out = solved.data_ptr<T>();
    const int64_t D = pb.D;
    at::parallel_for(0, factors.size(0), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> work(3 * D);
      for (int64_t r = begin; r < end; ++r) solve_row(pb, r, out + r * D, cg_steps, work);
    });
  });
  return solved;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("nested_als_solve_cpp", &nested_als_solve); }
