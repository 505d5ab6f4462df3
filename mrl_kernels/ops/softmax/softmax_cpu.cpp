// CPU kernels of the Matryoshka sampled softmax (mrl_kernels::mrl_softmax_loss_cpp
// and its backward), mirroring reference.py beside this file; their schemas
// are defined from spec.py (this file only implements them).
//
// Matryoshka sampled softmax. Each candidate row is read once: its prefix
// scores (and, for cosine scores, its prefix norms) are accumulated segment by
// segment, and every level it serves keeps an online log-sum-exp (running
// maximum, and the sum of exp(score - maximum)) started from the positive's
// score. Ids < 0 are padding; log_q / pos_log_q, where given, are subtracted
// from the candidates' / the positive's logits. The backward recomputes the scores, turns them
// into softmax weights with the saved lse, and writes per candidate the
// coefficients of its column segments; a second pass adds the candidates'
// gradients into the item gradient with each thread owning a range of item ids
// (no races, batch order whatever the thread count).

#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../common.h"

namespace {

using namespace mrl_kernels;

constexpr double kCosineEps = 1e-12;  // prefix norms are clamped here (reference.COSINE_EPS)

// The pools of a (B, M) or (B, L, M) candidate tensor and the levels they serve.
struct Pools {
  const int64_t* ids;
  int64_t P, M;  // pools per row (1 shared, or L), candidates per pool
  int64_t first(int64_t q) const { return P == 1 ? 0 : q; }  // the levels pool q serves: [first, last]
  int64_t last(int64_t q, int64_t L) const { return P == 1 ? L - 1 : q; }
  const int64_t* of(int64_t b, int64_t q) const { return ids + (b * P + q) * M; }
};

Pools pools_of(const Tensor& candidates, int64_t L) {
  return {candidates.data_ptr<int64_t>(), candidates.dim() == 3 ? L : 1, candidates.size(-1)};
}

// Inner products of u and row at levels [first, last] into dots[first..last]
// and, unless norms is null, the row's clamped prefix norms into norms[...]
// (a per-level pool row is read up to its level's width only).
template <typename T>
inline void served_scores(const T* u, const T* row, const std::vector<int64_t>& dims, int64_t first, int64_t last,
                          T* dots, T* norms) {
  const T eps = static_cast<T>(kCosineEps);
  if (first == last) {
    dots[first] = dot(u, row, dims[first]);
    if (norms) norms[first] = std::max(std::sqrt(dot(row, row, dims[first])), eps);
    return;
  }
  T running = 0, running_sq = 0;
  int64_t start = 0;
  for (int64_t l = 0; l <= last; ++l) {
    running += dot(u + start, row + start, dims[l] - start);
    if (norms) running_sq += dot(row + start, row + start, dims[l] - start);
    start = dims[l];
    dots[l] = running;
    if (norms) norms[l] = std::max(std::sqrt(running_sq), eps);
  }
}

// The user's clamped prefix norms (cosine scores), or ones.
template <typename T>
inline void user_norms(const T* u, const std::vector<int64_t>& dims, bool cosine, T* out) {
  if (!cosine) {
    std::fill(out, out + dims.size(), T(1));
    return;
  }
  served_scores(u, u, dims, 0, static_cast<int64_t>(dims.size()) - 1, out, static_cast<T*>(nullptr));  // |u_l|^2
  for (size_t l = 0; l < dims.size(); ++l) out[l] = std::max(std::sqrt(out[l]), static_cast<T>(kCosineEps));
}

// A row's scores (cosine: divided by both prefix norms) at levels [first, last];
// its norms (ones for inner products) into norms.
template <typename T>
inline void row_scores(const T* u, const T* row, const std::vector<int64_t>& dims, int64_t first, int64_t last,
                       bool cosine, const T* u_norms, T* scores, T* norms) {
  served_scores(u, row, dims, first, last, scores, cosine ? norms : nullptr);
  for (int64_t l = first; l <= last; ++l) {
    if (cosine) {
      scores[l] /= u_norms[l] * norms[l];
    } else {
      norms[l] = 1;
    }
  }
}

// The logQ corrections as pointers (null where not given): log_q laid out as the
// candidates, pos_log_q one a row.
template <typename T>
struct Corrections {
  const T* candidates;
  const T* pos;
  T of(const int64_t* ids, const Pools& pools, int64_t m) const {  // the correction of candidate m of a pool
    return candidates ? candidates[(ids - pools.ids) + m] : T(0);
  }
  T of_pos(int64_t b) const { return pos ? pos[b] : T(0); }
};

template <typename T>
void softmax_forward_impl(const Tensor& user, const Tensor& pos, const Tensor& item_weight, const Tensor& candidates,
                          const std::vector<int64_t>& dims, const Tensor& weights, double temperature, bool cosine,
                          const Corrections<T>& corrections, Tensor& loss, Tensor& lse) {
  const int64_t B = user.size(0), L = static_cast<int64_t>(dims.size());
  const Rows<T> U = rows_of<T>(user), P = rows_of<T>(pos), I = rows_of<T>(item_weight);
  const Pools pools = pools_of(candidates, L);
  const float* w = weights.data_ptr<float>();
  const T inv_t = static_cast<T>(1.0 / temperature);
  T* loss_out = loss.data_ptr<T>();
  T* lse_out = lse.data_ptr<T>();
  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> top(L), total(L), pos_scores(L), scores(L), norms(L), u_norms(L);
    for (int64_t b = begin; b < end; ++b) {
      const T* u = U[b];
      user_norms(u, dims, cosine, u_norms.data());
      row_scores(u, P[b], dims, 0, L - 1, cosine, u_norms.data(), pos_scores.data(), norms.data());
      const T pos_q = corrections.of_pos(b);
      for (int64_t l = 0; l < L; ++l) {
        pos_scores[l] = pos_scores[l] * inv_t - pos_q;  // the positive's logit
        top[l] = pos_scores[l];
        total[l] = 1;
      }
      for (int64_t q = 0; q < pools.P; ++q) {
        const int64_t first = pools.first(q), last = pools.last(q, L);
        const int64_t* ids = pools.of(b, q);
        for (int64_t m = 0; m < pools.M; ++m) {
          if (m + kPrefetch < pools.M && ids[m + kPrefetch] >= 0) prefetch_row(I[ids[m + kPrefetch]], dims[last]);
          if (ids[m] < 0) continue;
          row_scores(u, I[ids[m]], dims, first, last, cosine, u_norms.data(), scores.data(), norms.data());
          const T correction = corrections.of(ids, pools, m);
          for (int64_t l = first; l <= last; ++l) {
            const T x = scores[l] * inv_t - correction;
            if (x > top[l]) {
              total[l] = total[l] * std::exp(top[l] - x) + 1;
              top[l] = x;
            } else {
              total[l] += std::exp(x - top[l]);  // NaN propagates
            }
          }
        }
      }
      T row_loss = 0;
      for (int64_t l = 0; l < L; ++l) {
        lse_out[b * L + l] = top[l] + std::log(total[l]);
        row_loss += static_cast<T>(w[l]) * (lse_out[b * L + l] - pos_scores[l]);
      }
      loss_out[b] = row_loss;
    }
  });
}

// segment[k] = sum of coef[l] over the levels l >= k in [first, last]: the
// coefficient of the columns [d_{k-1}, d_k), for k <= last.
template <typename T>
inline void segment_coefs(const T* coef, int64_t first, int64_t last, T* segment) {
  T running = 0;
  for (int64_t k = last; k >= 0; --k) {
    if (k >= first) running += coef[k];
    segment[k] = running;
  }
}

// out[c] += segment[k] * x[c] over the columns [0, d_last).
template <typename T>
inline void add_by_segment(T* out, const T* segment, const T* x, const std::vector<int64_t>& dims, int64_t last) {
  int64_t start = 0;
  for (int64_t k = 0; k <= last; ++k) {
    const T g = segment[k];
#pragma omp simd
    for (int64_t c = start; c < dims[k]; ++c) out[c] += g * x[c];
    start = dims[k];
  }
}

// The gradient of one row's scores at levels [first, last] given dloss/dscore
// `coef` (after the 1/t): with s the cosine, nu and ne the user's and the row's
// prefix norms, d row += (coef / (nu ne)) u - (coef s / ne^2) row and
// d user += (coef / (nu ne)) row - (coef s / nu^2) u (inner products: coef u and
// coef row). Writes the segment coefficients of the row's gradient (`cross` for
// u, `self` for the row; self is zero for inner products) and adds into gu.
template <typename T>
inline void score_gradient(const T* u, const T* row, const std::vector<int64_t>& dims, int64_t first, int64_t last,
                           bool cosine, const T* scores, const T* u_norms, const T* norms, T* coef, T* gu, T* cross,
                           T* self, T* scratch) {
  const int64_t L = static_cast<int64_t>(dims.size());
  for (int64_t l = first; l <= last; ++l) scratch[l] = coef[l] / (u_norms[l] * norms[l]);
  segment_coefs(scratch, first, last, cross);
  add_by_segment(gu, cross, row, dims, last);
  if (!cosine) {
    std::fill(self, self + L, T(0));
    return;
  }
  for (int64_t l = first; l <= last; ++l) scratch[l] = -coef[l] * scores[l] / (u_norms[l] * u_norms[l]);
  segment_coefs(scratch, first, last, scratch + L);
  add_by_segment(gu, scratch + L, u, dims, last);
  for (int64_t l = first; l <= last; ++l) scratch[l] = -coef[l] * scores[l] / (norms[l] * norms[l]);
  segment_coefs(scratch, first, last, self);
}

template <typename T>
void softmax_backward_impl(const Tensor& grad, const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                           const Tensor& candidates, const Tensor& lse, const std::vector<int64_t>& dims,
                           const Tensor& weights, double temperature, bool cosine, const Corrections<T>& corrections,
                           Tensor& grad_user, Tensor& grad_pos, Tensor& grad_items) {
  const int64_t B = user.size(0), D = user.size(1), L = static_cast<int64_t>(dims.size());
  const Rows<T> U = rows_of<T>(user), P = rows_of<T>(pos), I = rows_of<T>(item_weight);
  const Pools pools = pools_of(candidates, L);
  const float* w = weights.data_ptr<float>();
  const T inv_t = static_cast<T>(1.0 / temperature);
  const T* g_data = grad.data_ptr<T>();
  const T* lse_data = lse.data_ptr<T>();
  T* gu = grad_user.data_ptr<T>();
  T* gp = grad_pos.data_ptr<T>();
  // per (row, pool, candidate): the segment coefficients of its gradient, of u then (cosine) of its own row;
  // kept for the item pass only when the item gradient is wanted (grad_items defined)
  const bool rows_grad = grad_items.defined();
  const int64_t stride = cosine ? 2 * L : L;
  std::vector<T> segments(rows_grad ? static_cast<size_t>(B * pools.P * pools.M * stride) : 0);
  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(L), coef(L), norms(L), u_norms(L), scratch(2 * L), cross(L), self(L), unkept(stride);
    for (int64_t b = begin; b < end; ++b) {
      const T* u = U[b];
      const T* p = P[b];
      const T* row_lse = lse_data + b * L;
      T* gu_b = gu + b * D;
      T* gp_b = gp + b * D;
      std::fill(gu_b, gu_b + D, T(0));
      std::fill(gp_b, gp_b + D, T(0));
      user_norms(u, dims, cosine, u_norms.data());
      row_scores(u, p, dims, 0, L - 1, cosine, u_norms.data(), scores.data(), norms.data());
      for (int64_t l = 0; l < L; ++l)
        coef[l] = g_data[b] * static_cast<T>(w[l]) * inv_t *
                  (std::exp(scores[l] * inv_t - corrections.of_pos(b) - row_lse[l]) - 1);
      score_gradient(u, p, dims, 0, L - 1, cosine, scores.data(), u_norms.data(), norms.data(), coef.data(), gu_b,
                     cross.data(), self.data(), scratch.data());
      add_by_segment(gp_b, cross.data(), u, dims, L - 1);
      add_by_segment(gp_b, self.data(), p, dims, L - 1);
      for (int64_t q = 0; q < pools.P; ++q) {
        const int64_t first = pools.first(q), last = pools.last(q, L);
        const int64_t* ids = pools.of(b, q);
        for (int64_t m = 0; m < pools.M; ++m) {
          if (ids[m] < 0) continue;
          T* segment = rows_grad ? segments.data() + ((b * pools.P + q) * pools.M + m) * stride : unkept.data();
          const T* row = I[ids[m]];
          row_scores(u, row, dims, first, last, cosine, u_norms.data(), scores.data(), norms.data());
          const T correction = corrections.of(ids, pools, m);
          for (int64_t l = first; l <= last; ++l)
            coef[l] = g_data[b] * static_cast<T>(w[l]) * inv_t *
                      std::exp(scores[l] * inv_t - correction - row_lse[l]);
          score_gradient(u, row, dims, first, last, cosine, scores.data(), u_norms.data(), norms.data(), coef.data(),
                         gu_b, segment, cosine ? segment + L : self.data(), scratch.data());
        }
      }
    }
  });
  if (!rows_grad) return;
  T* gi = grad_items.data_ptr<T>();
  const int64_t N = item_weight.size(0);
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t q = 0; q < pools.P; ++q) {
        const int64_t* ids = pools.of(b, q);
        for (int64_t m = 0; m < pools.M; ++m) {
          const int64_t id = ids[m];
          if (id < lo || id >= hi) continue;  // padding (id < 0) included
          const T* segment = segments.data() + ((b * pools.P + q) * pools.M + m) * stride;
          add_by_segment(gi + id * D, segment, U[b], dims, pools.last(q, L));
          if (cosine) add_by_segment(gi + id * D, segment + L, I[id], dims, pools.last(q, L));
        }
      }
    }
  });
}

// An optional correction in the kernels' dtype, contiguous (undefined where not given).
Tensor correction_of(const std::optional<Tensor>& t, const Tensor& user) {
  return t.has_value() ? t->to(user.scalar_type()).contiguous() : Tensor();
}

template <typename T>
Corrections<T> corrections_of(const Tensor& log_q, const Tensor& pos_log_q) {
  return {log_q.defined() ? log_q.data_ptr<T>() : nullptr, pos_log_q.defined() ? pos_log_q.data_ptr<T>() : nullptr};
}

std::tuple<Tensor, Tensor> mrl_softmax_loss(const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                                            const Tensor& candidates, at::IntArrayRef dims, const Tensor& weights,
                                            double temperature, bool cosine, const std::optional<Tensor>& log_q,
                                            const std::optional<Tensor>& pos_log_q) {
  check_cpu_float(user, "user");
  const int64_t B = user.size(0), L = static_cast<int64_t>(dims.size());
  const Tensor u = user.contiguous(), p = pos.contiguous(), table = rowwise(item_weight);
  const Tensor cand = candidates.to(at::kLong).contiguous(), w = weights.to(at::kFloat).contiguous();
  const Tensor lq = correction_of(log_q, user), plq = correction_of(pos_log_q, user);
  Tensor loss = at::empty({B}, user.options()), lse = at::empty({B, L}, user.options());
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_softmax_loss_cpu", [&] {
    softmax_forward_impl<scalar_t>(u, p, table, cand, as_vector(dims), w, temperature, cosine,
                                   corrections_of<scalar_t>(lq, plq), loss, lse);
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> mrl_softmax_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                             const Tensor& item_weight, const Tensor& candidates,
                                                             const Tensor& lse, at::IntArrayRef dims,
                                                             const Tensor& weights, double temperature, bool cosine,
                                                             const std::optional<Tensor>& log_q,
                                                             const std::optional<Tensor>& pos_log_q,
                                                             std::array<bool, 3> output_mask) {
  check_cpu_float(user, "user");
  const Tensor u = user.contiguous(), p = pos.contiguous(), table = rowwise(item_weight);
  const Tensor cand = candidates.to(at::kLong).contiguous(), w = weights.to(at::kFloat).contiguous();
  const Tensor g = grad.to(user.scalar_type()).contiguous(), saved = lse.to(user.scalar_type()).contiguous();
  const Tensor lq = correction_of(log_q, user), plq = correction_of(pos_log_q, user);
  Tensor grad_user = at::empty(user.sizes(), user.options()), grad_pos = at::empty(pos.sizes(), pos.options());
  Tensor grad_items = output_mask[2] ? at::zeros(item_weight.sizes(), item_weight.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_softmax_loss_backward_cpu", [&] {
    softmax_backward_impl<scalar_t>(g, u, p, table, cand, saved, as_vector(dims), w, temperature, cosine,
                                    corrections_of<scalar_t>(lq, plq), grad_user, grad_pos, grad_items);
  });
  return masked(grad_user, grad_pos, grad_items, output_mask, user.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) {
  m.impl("mrl_softmax_loss_cpp", &mrl_softmax_loss);
  m.impl("mrl_softmax_loss_backward_cpp", &mrl_softmax_loss_backward);
}
