// Fused CPU kernels for Matryoshka negative sampling (MNS), the MRL loss and the
// Matryoshka sampled softmax.
//
// The operators mrl_kernels::*_cpp mirror the reference in
// mrl_kernels/reference.py (their contract: mrl_kernels/spec.py):
//   - each candidate row is read once: prefix scores are accumulated segment by
//     segment ([d_{l-1}, d_l)), keeping each level's running maximum and first
//     argmax (a per-level pool row is read up to its level's width only);
//   - the loss comes from the running maxima, no second gather;
//   - rows of the batch run in parallel (at::parallel_for), inner loops are
//     contiguous dot products the compiler vectorises (omp simd);
//   - the backward adds the chosen rows' gradients into the item gradient with
//     each thread owning a range of item ids, so there are no races and the sum
//     order (batch order) does not depend on the number of threads.
// float32 and float64; float32 inputs accumulate in float32, like the reference.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Strided 2-D view of rows with contiguous columns.
template <typename T>
struct Rows {
  const T* data;
  int64_t stride;
  const T* operator[](int64_t i) const { return data + i * stride; }
};

template <typename T>
Rows<T> rows_of(const Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1), "expected rows with contiguous columns");
  return {t.data_ptr<T>(), t.stride(0)};
}

Tensor rowwise(const Tensor& t) {
  // Rows may be strided, columns must be contiguous.
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

constexpr int64_t kGrain = 16;

// How many candidates ahead rows are prefetched, and the prefetch of one row's
// first n values (one request per 64-byte line).
constexpr int64_t kPrefetch = 4;

template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + k);
}

template <typename T>
inline void loss_from_scores(const T* neg_score, const T* pos_score, const float* w, int64_t L, T* loss_out,
                             T* coef_out) {
  T loss = 0;
  for (int64_t l = 0; l < L; ++l) {
    const T x = neg_score[l] - pos_score[l];
    const T z = std::exp(-std::abs(x));
    loss += static_cast<T>(w[l]) * (std::max(x, T(0)) + std::log1p(z));
    coef_out[l] = static_cast<T>(w[l]) * (x >= 0 ? T(1) / (T(1) + z) : z / (T(1) + z));
  }
  *loss_out = loss;
}

// torch.argmax's order: a strictly larger score replaces the best (ties keep the
// earlier candidate), NaN counts above every number (the first NaN wins).
template <typename T>
inline bool better(T score, T best) {
  return score > best || (std::isnan(score) && !std::isnan(best));
}

template <typename T>
inline void prefix_scores(const T* u, const T* row, const std::vector<int64_t>& dims, T* out) {
  T running = 0;
  int64_t start = 0;
  for (size_t l = 0; l < dims.size(); ++l) {
    running += dot(u + start, row + start, dims[l] - start);
    start = dims[l];
    out[l] = running;
  }
}

// Forward of all three operators. Exactly one of candidates (ids into
// item_weight) and neg (given vectors, (B, L, D)) is defined.
template <typename T>
void forward_impl(const Tensor& user, const Tensor& pos, const Tensor& item_weight, const Tensor& candidates,
                  const Tensor& neg, const std::vector<int64_t>& dims, const Tensor& weights, Tensor& negatives,
                  Tensor& loss, Tensor& coef) {
  const int64_t B = user.size(0), L = static_cast<int64_t>(dims.size());
  const bool gather = candidates.defined(), compute_loss = loss.defined();
  const bool per_level = gather ? candidates.dim() == 3 : true;
  const int64_t M = gather ? candidates.size(-1) : 1;
  const Rows<T> U = rows_of<T>(user);
  const Rows<T> P = compute_loss ? rows_of<T>(pos) : U;
  const Rows<T> I = gather ? rows_of<T>(item_weight) : Rows<T>{nullptr, 0};
  const int64_t* cand = gather ? candidates.data_ptr<int64_t>() : nullptr;
  const T* neg_data = gather ? nullptr : neg.data_ptr<T>();
  const int64_t nb = gather ? 0 : neg.stride(0), nl = gather ? 0 : neg.stride(1);
  const float* w = compute_loss ? weights.data_ptr<float>() : nullptr;
  int64_t* neg_out = gather ? negatives.data_ptr<int64_t>() : nullptr;
  T* loss_out = compute_loss ? loss.data_ptr<T>() : nullptr;
  T* coef_out = compute_loss ? coef.data_ptr<T>() : nullptr;

  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> best(L), scores(L), pos_scores(L);
    std::vector<int64_t> best_id(L);
    for (int64_t b = begin; b < end; ++b) {
      const T* u = U[b];
      // the first candidate is chosen unless a better one follows (all -inf: the first)
      std::fill(best.begin(), best.end(), -std::numeric_limits<T>::infinity());
      for (int64_t l = 0; gather && l < L; ++l) best_id[l] = cand[per_level ? (b * L + l) * M : b * M];
      if (!gather) {
        for (int64_t l = 0; l < L; ++l) best[l] = dot(u, neg_data + b * nb + l * nl, dims[l]);
      } else if (per_level) {
        for (int64_t l = 0; l < L; ++l) {
          const int64_t* pool = cand + (b * L + l) * M;
          for (int64_t m = 0; m < M; ++m) {
            // rows are gathered at random: ask for a later candidate's row while this one is scored
            if (m + kPrefetch < M) prefetch_row(I[pool[m + kPrefetch]], dims[l]);
            const T s = dot(u, I[pool[m]], dims[l]);
            if (better(s, best[l])) {
              best[l] = s;
              best_id[l] = pool[m];
            }
          }
        }
      } else {
        const int64_t* pool = cand + b * M;
        for (int64_t m = 0; m < M; ++m) {
          if (m + kPrefetch < M) prefetch_row(I[pool[m + kPrefetch]], dims.back());
          prefix_scores(u, I[pool[m]], dims, scores.data());
          for (int64_t l = 0; l < L; ++l) {
            if (better(scores[l], best[l])) {
              best[l] = scores[l];
              best_id[l] = pool[m];
            }
          }
        }
      }
      if (gather) std::copy(best_id.begin(), best_id.end(), neg_out + b * L);
      if (compute_loss) {
        prefix_scores(u, P[b], dims, pos_scores.data());
        loss_from_scores(best.data(), pos_scores.data(), w, L, loss_out + b, coef_out + b * L);
      }
    }
  });
}

// Backward. With negatives (ids) the item gradient is accumulated in place;
// with neg (vectors) grad_neg (B, L, D) is written.
template <typename T>
void backward_impl(const Tensor& grad, const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                   const Tensor& negatives, const Tensor& neg, const Tensor& coef, const std::vector<int64_t>& dims,
                   Tensor& grad_user, Tensor& grad_pos, Tensor& grad_other) {
  const int64_t B = user.size(0), D = user.size(1), L = static_cast<int64_t>(dims.size());
  const bool gather = negatives.defined();
  const Rows<T> U = rows_of<T>(user), P = rows_of<T>(pos);
  const Rows<T> I = gather ? rows_of<T>(item_weight) : Rows<T>{nullptr, 0};
  const int64_t* ids = gather ? negatives.data_ptr<int64_t>() : nullptr;
  const T* neg_data = gather ? nullptr : neg.data_ptr<T>();
  const int64_t nb = gather ? 0 : neg.stride(0), nl = gather ? 0 : neg.stride(1);
  const T* g_data = grad.data_ptr<T>();
  const T* c_data = coef.data_ptr<T>();
  T* gu = grad_user.data_ptr<T>();
  T* gp = grad_pos.data_ptr<T>();
  T* go = grad_other.data_ptr<T>();

  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> column_coef(D);
    for (int64_t b = begin; b < end; ++b) {
      const T* u = U[b];
      const T* p = P[b];
      T* gu_b = gu + b * D;
      std::fill(gu_b, gu_b + D, T(0));
      std::fill(column_coef.begin(), column_coef.end(), T(0));
      for (int64_t l = 0; l < L; ++l) {
        const T g = c_data[b * L + l] * g_data[b];
        const T* n = gather ? I[ids[b * L + l]] : neg_data + b * nb + l * nl;
        const int64_t d = dims[l];
#pragma omp simd
        for (int64_t k = 0; k < d; ++k) {
          gu_b[k] += g * n[k];
          column_coef[k] += g;
        }
        if (!gather) {
          T* gn = go + (b * L + l) * D;
#pragma omp simd
          for (int64_t k = 0; k < d; ++k) gn[k] = g * u[k];
          std::fill(gn + d, gn + D, T(0));
        }
      }
      T* gp_b = gp + b * D;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) {
        gu_b[k] -= column_coef[k] * p[k];
        gp_b[k] = -column_coef[k] * u[k];
      }
    }
  });

  if (gather) {
    // Each thread owns the item ids in [lo, hi): no races, and every row's
    // contributions are added in batch order whatever the thread count.
    const int64_t N = item_weight.size(0);
    at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t l = 0; l < L; ++l) {
          const int64_t id = ids[b * L + l];
          if (id < lo || id >= hi) continue;
          const T g = c_data[b * L + l] * g_data[b];
          const T* u = U[b];
          T* row = go + id * D;
#pragma omp simd
          for (int64_t k = 0; k < dims[l]; ++k) row[k] += g * u[k];
        }
      }
    });
  }
}

void check_cpu_float(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 for the cpp backend, got ", t.scalar_type());
}

std::vector<int64_t> as_vector(at::IntArrayRef dims) { return {dims.begin(), dims.end()}; }

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                                           const Tensor& candidates, const Tensor& neg, at::IntArrayRef dims,
                                           const Tensor& weights, bool compute_loss) {
  check_cpu_float(user, "user");
  const int64_t B = user.size(0), L = static_cast<int64_t>(dims.size());
  const Tensor u = user.contiguous();
  const Tensor p = compute_loss ? pos.contiguous() : Tensor();
  const Tensor table = item_weight.defined() ? rowwise(item_weight) : Tensor();
  const Tensor cand = candidates.defined() ? candidates.to(at::kLong).contiguous() : Tensor();
  const Tensor n = neg.defined() ? rowwise(neg) : Tensor();
  const Tensor w = compute_loss ? weights.to(at::kFloat).contiguous() : Tensor();
  Tensor negatives = cand.defined() ? at::empty({B, L}, user.options().dtype(at::kLong)) : Tensor();
  Tensor loss = compute_loss ? at::empty({B}, user.options()) : Tensor();
  Tensor coef = compute_loss ? at::empty({B, L}, user.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_forward_cpu", [&] {
    forward_impl<scalar_t>(u, p, table, cand, n, as_vector(dims), w, negatives, loss, coef);
  });
  return {loss, negatives, coef};
}

Tensor mns_sample(const Tensor& user, const Tensor& item_weight, const Tensor& candidates, at::IntArrayRef dims) {
  return std::get<1>(forward(user, Tensor(), item_weight, candidates, Tensor(), dims, Tensor(), false));
}

std::tuple<Tensor, Tensor> mrl_bpr_loss(const Tensor& user, const Tensor& pos, const Tensor& neg,
                                        at::IntArrayRef dims, const Tensor& weights) {
  auto out = forward(user, pos, Tensor(), Tensor(), neg, dims, weights, true);
  return {std::get<0>(out), std::get<2>(out)};
}

std::tuple<Tensor, Tensor, Tensor> mns_bpr_loss(const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                                                const Tensor& candidates, at::IntArrayRef dims,
                                                const Tensor& weights) {
  return forward(user, pos, item_weight, candidates, Tensor(), dims, weights, true);
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                            const Tensor& item_weight, const Tensor& negatives,
                                            const Tensor& neg, const Tensor& coef, at::IntArrayRef dims) {
  check_cpu_float(user, "user");
  const Tensor u = user.contiguous(), p = pos.contiguous();
  const Tensor g = grad.to(user.scalar_type()).contiguous(), c = coef.to(user.scalar_type()).contiguous();
  Tensor grad_user = at::empty(user.sizes(), user.options());
  Tensor grad_pos = at::empty(pos.sizes(), pos.options());
  Tensor table, ids, n, grad_other;
  if (negatives.defined()) {
    table = rowwise(item_weight);
    ids = negatives.to(at::kLong).contiguous();
    grad_other = at::zeros(item_weight.sizes(), item_weight.options());
  } else {
    n = rowwise(neg);
    grad_other = at::empty(neg.sizes(), neg.options());
  }
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_backward_cpu", [&] {
    backward_impl<scalar_t>(g, u, p, table, ids, n, c, as_vector(dims), grad_user, grad_pos, grad_other);
  });
  return {grad_user, grad_pos, grad_other};
}

std::tuple<Tensor, Tensor, Tensor> mrl_bpr_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                         const Tensor& neg, const Tensor& coef,
                                                         at::IntArrayRef dims) {
  return backward(grad, user, pos, Tensor(), Tensor(), neg, coef, dims);
}

std::tuple<Tensor, Tensor, Tensor> mns_bpr_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                         const Tensor& item_weight, const Tensor& negatives,
                                                         const Tensor& coef, at::IntArrayRef dims) {
  return backward(grad, user, pos, item_weight, negatives, Tensor(), coef, dims);
}

// ----------------------------------------------------------- mrl_softmax_loss
// Matryoshka sampled softmax. Each candidate row is read once: its prefix
// scores (and, for cosine scores, its prefix norms) are accumulated segment by
// segment, and every level it serves keeps an online log-sum-exp (running
// maximum, and the sum of exp(score - maximum)) started from the positive's
// score. Ids < 0 are padding. The backward recomputes the scores, turns them
// into softmax weights with the saved lse, and writes per candidate the
// coefficients of its column segments; a second pass adds the candidates'
// gradients into the item gradient with each thread owning a range of item ids
// (no races, batch order whatever the thread count).

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

template <typename T>
void softmax_forward_impl(const Tensor& user, const Tensor& pos, const Tensor& item_weight, const Tensor& candidates,
                          const std::vector<int64_t>& dims, const Tensor& weights, double temperature, bool cosine,
                          Tensor& loss, Tensor& lse) {
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
      for (int64_t l = 0; l < L; ++l) {
        top[l] = pos_scores[l] * inv_t;
        total[l] = 1;
      }
      for (int64_t q = 0; q < pools.P; ++q) {
        const int64_t first = pools.first(q), last = pools.last(q, L);
        const int64_t* ids = pools.of(b, q);
        for (int64_t m = 0; m < pools.M; ++m) {
          if (m + kPrefetch < pools.M && ids[m + kPrefetch] >= 0) prefetch_row(I[ids[m + kPrefetch]], dims[last]);
          if (ids[m] < 0) continue;
          row_scores(u, I[ids[m]], dims, first, last, cosine, u_norms.data(), scores.data(), norms.data());
          for (int64_t l = first; l <= last; ++l) {
            const T x = scores[l] * inv_t;
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
        row_loss += static_cast<T>(w[l]) * (lse_out[b * L + l] - pos_scores[l] * inv_t);
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
                           const Tensor& weights, double temperature, bool cosine, Tensor& grad_user,
                           Tensor& grad_pos, Tensor& grad_items) {
  const int64_t B = user.size(0), D = user.size(1), L = static_cast<int64_t>(dims.size());
  const Rows<T> U = rows_of<T>(user), P = rows_of<T>(pos), I = rows_of<T>(item_weight);
  const Pools pools = pools_of(candidates, L);
  const float* w = weights.data_ptr<float>();
  const T inv_t = static_cast<T>(1.0 / temperature);
  const T* g_data = grad.data_ptr<T>();
  const T* lse_data = lse.data_ptr<T>();
  T* gu = grad_user.data_ptr<T>();
  T* gp = grad_pos.data_ptr<T>();
  // per (row, pool, candidate): the segment coefficients of its gradient, of u then (cosine) of its own row
  const int64_t stride = cosine ? 2 * L : L;
  std::vector<T> segments(static_cast<size_t>(B * pools.P * pools.M * stride));
  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(L), coef(L), norms(L), u_norms(L), scratch(2 * L), cross(L), self(L);
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
        coef[l] = g_data[b] * static_cast<T>(w[l]) * inv_t * (std::exp(scores[l] * inv_t - row_lse[l]) - 1);
      score_gradient(u, p, dims, 0, L - 1, cosine, scores.data(), u_norms.data(), norms.data(), coef.data(), gu_b,
                     cross.data(), self.data(), scratch.data());
      add_by_segment(gp_b, cross.data(), u, dims, L - 1);
      add_by_segment(gp_b, self.data(), p, dims, L - 1);
      for (int64_t q = 0; q < pools.P; ++q) {
        const int64_t first = pools.first(q), last = pools.last(q, L);
        const int64_t* ids = pools.of(b, q);
        for (int64_t m = 0; m < pools.M; ++m) {
          if (ids[m] < 0) continue;
          T* segment = segments.data() + ((b * pools.P + q) * pools.M + m) * stride;
          const T* row = I[ids[m]];
          row_scores(u, row, dims, first, last, cosine, u_norms.data(), scores.data(), norms.data());
          for (int64_t l = first; l <= last; ++l)
            coef[l] = g_data[b] * static_cast<T>(w[l]) * inv_t * std::exp(scores[l] * inv_t - row_lse[l]);
          score_gradient(u, row, dims, first, last, cosine, scores.data(), u_norms.data(), norms.data(), coef.data(),
                         gu_b, segment, cosine ? segment + L : self.data(), scratch.data());
        }
      }
    }
  });
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

std::tuple<Tensor, Tensor> mrl_softmax_loss(const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                                            const Tensor& candidates, at::IntArrayRef dims, const Tensor& weights,
                                            double temperature, bool cosine) {
  check_cpu_float(user, "user");
  const int64_t B = user.size(0), L = static_cast<int64_t>(dims.size());
  const Tensor u = user.contiguous(), p = pos.contiguous(), table = rowwise(item_weight);
  const Tensor cand = candidates.to(at::kLong).contiguous(), w = weights.to(at::kFloat).contiguous();
  Tensor loss = at::empty({B}, user.options()), lse = at::empty({B, L}, user.options());
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_softmax_loss_cpu", [&] {
    softmax_forward_impl<scalar_t>(u, p, table, cand, as_vector(dims), w, temperature, cosine, loss, lse);
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> mrl_softmax_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                             const Tensor& item_weight, const Tensor& candidates,
                                                             const Tensor& lse, at::IntArrayRef dims,
                                                             const Tensor& weights, double temperature, bool cosine) {
  check_cpu_float(user, "user");
  const Tensor u = user.contiguous(), p = pos.contiguous(), table = rowwise(item_weight);
  const Tensor cand = candidates.to(at::kLong).contiguous(), w = weights.to(at::kFloat).contiguous();
  const Tensor g = grad.to(user.scalar_type()).contiguous(), saved = lse.to(user.scalar_type()).contiguous();
  Tensor grad_user = at::empty(user.sizes(), user.options()), grad_pos = at::empty(pos.sizes(), pos.options());
  Tensor grad_items = at::zeros(item_weight.sizes(), item_weight.options());
  AT_DISPATCH_FLOATING_TYPES(user.scalar_type(), "mrl_softmax_loss_backward_cpu", [&] {
    softmax_backward_impl<scalar_t>(g, u, p, table, cand, saved, as_vector(dims), w, temperature, cosine, grad_user,
                                    grad_pos, grad_items);
  });
  return {grad_user, grad_pos, grad_items};
}

// ---------------------------------------------------------------- prefix_topk
// Adaptive retrieval without a (B, N) score matrix. Blocks of queries run in
// parallel; for each block of items the narrow scores come from one small
// matrix product (BLAS), and each query keeps a running top-`shortlist` (a heap
// ordered by score, ties to the lower id) that most items leave at one
// comparison with its worst entry. Excluded items are skipped by a cursor into
// each query's sorted exclusions (items are visited in ascending id order). The
// shortlist is then reranked by full-width inner products and the best k kept.
// Scores accumulate in T (float32 or float64); a float16 / bfloat16 narrow table
// is converted block by block.
struct Scored {
  double score;
  int64_t id;
};

// a ranks before b: higher score, ties to the lower id
inline bool ranks_before(const Scored& a, const Scored& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

constexpr int64_t kQueryBlock = 16, kItemBlock = 4096;

template <typename T>
void prefix_topk_impl(const Tensor& query, const Tensor& narrow, const Tensor& item_weight, int64_t k,
                      int64_t shortlist, const int64_t* offsets, const int64_t* excluded, Tensor& scores,
                      Tensor& ids) {
  const int64_t B = query.size(0), D = query.size(1), n_items = narrow.size(0), width = narrow.size(1);
  const Rows<T> Q = rows_of<T>(query), I = rows_of<T>(item_weight);
  const Tensor narrow_query = query.narrow(1, 0, width).contiguous();
  T* score_out = scores.data_ptr<T>();
  int64_t* id_out = ids.data_ptr<int64_t>();
  const int64_t n_blocks = (B + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<std::vector<Scored>> heaps(kQueryBlock);
    std::vector<std::vector<int64_t>> skip(kQueryBlock);
    std::vector<size_t> cursor(kQueryBlock);
    std::vector<Scored> ranked;
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t q0 = block * kQueryBlock, nq = std::min(kQueryBlock, B - q0);
      for (int64_t r = 0; r < nq; ++r) {
        heaps[r].clear();
        skip[r].assign(excluded + offsets[q0 + r], excluded + offsets[q0 + r + 1]);
        std::sort(skip[r].begin(), skip[r].end());
        cursor[r] = 0;
      }
      const Tensor qs = narrow_query.narrow(0, q0, nq);
      for (int64_t j0 = 0; j0 < n_items; j0 += kItemBlock) {
        const int64_t nj = std::min(kItemBlock, n_items - j0);
        const Tensor block_scores = at::mm(qs, narrow.narrow(0, j0, nj).to(query.scalar_type()).t()).contiguous();
        const T* S = block_scores.data_ptr<T>();
        for (int64_t r = 0; r < nq; ++r) {
          std::vector<Scored>& heap = heaps[r];  // front: the worst kept
          const bool full_first = static_cast<int64_t>(heap.size()) >= shortlist;
          double worst = full_first ? heap.front().score : -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < nj; ++j) {
            const double s = static_cast<double>(S[r * nj + j]);
            const bool full = static_cast<int64_t>(heap.size()) >= shortlist;
            // ids rise during the scan: an equal score never beats the worst kept
            if (full && !(s > worst)) continue;
            const int64_t id = j0 + j;
            while (cursor[r] < skip[r].size() && skip[r][cursor[r]] < id) ++cursor[r];
            if (cursor[r] < skip[r].size() && skip[r][cursor[r]] == id) continue;
            if (full) {
              std::pop_heap(heap.begin(), heap.end(), ranks_before);
              heap.back() = {s, id};
            } else {
              heap.push_back({s, id});
            }
            std::push_heap(heap.begin(), heap.end(), ranks_before);
            if (static_cast<int64_t>(heap.size()) >= shortlist) worst = heap.front().score;
          }
        }
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t b = q0 + r;
        ranked.clear();
        for (const Scored& c : heaps[r]) ranked.push_back({static_cast<double>(dot(Q[b], I[c.id], D)), c.id});
        const int64_t kept = std::min<int64_t>(k, static_cast<int64_t>(ranked.size()));
        std::partial_sort(ranked.begin(), ranked.begin() + kept, ranked.end(), ranks_before);
        for (int64_t i = 0; i < k; ++i) {
          score_out[b * k + i] = i < kept ? static_cast<T>(ranked[i].score) : -std::numeric_limits<T>::infinity();
          id_out[b * k + i] = i < kept ? ranked[i].id : -1;
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> prefix_topk(const Tensor& query, const Tensor& narrow, const Tensor& item_weight,
                                       int64_t k, int64_t shortlist, const Tensor& exclude_offsets,
                                       const Tensor& exclude_ids) {
  check_cpu_float(query, "query");
  TORCH_CHECK(item_weight.scalar_type() == query.scalar_type(), "item_weight must have query's dtype");
  const Tensor q = query.contiguous(), items = rowwise(item_weight), short_table = rowwise(narrow);
  const Tensor offsets = exclude_offsets.to(at::kLong).contiguous(), excluded = exclude_ids.to(at::kLong).contiguous();
  Tensor scores = at::empty({query.size(0), k}, query.options());
  Tensor ids = at::empty({query.size(0), k}, query.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "prefix_topk", [&] {
    prefix_topk_impl<scalar_t>(q, short_table, items, k, shortlist, offsets.data_ptr<int64_t>(),
                               excluded.data_ptr<int64_t>(), scores, ids);
  });
  return {scores, ids};
}

// ------------------------------------------------------------------ lazy_adam
// One Adam step on the rows `indices` (unique) of a table, with their gradient
// rows `values`: each row's moments and weights are read and written once, in
// one pass (rows run in parallel; a row's arithmetic is that of torch's
// SparseAdam). Random rows of a large table are fetched kPrefetch rows ahead.
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

// The schemas of mrl_kernels/spec.py, suffixed _cpp; loading the library checks
// that they agree (mrl_kernels.library.check_schemas).
TORCH_LIBRARY_FRAGMENT(mrl_kernels, m) {
  m.def("mns_sample_cpp(Tensor user, Tensor item_weight, Tensor candidates, int[] dims) -> Tensor negatives");
  m.def(
      "mrl_bpr_loss_cpp(Tensor user, Tensor pos, Tensor neg, int[] dims, Tensor weights)"
      " -> (Tensor loss, Tensor coef)");
  m.def(
      "mrl_bpr_loss_backward_cpp(Tensor grad, Tensor user, Tensor pos, Tensor neg, Tensor coef, int[] dims)"
      " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_neg)");
  m.def(
      "mns_bpr_loss_cpp(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, "
      "Tensor weights) -> (Tensor loss, Tensor negatives, Tensor coef)");
  m.def(
      "mns_bpr_loss_backward_cpp(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor negatives, "
      "Tensor coef, int[] dims) -> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)");
  m.def(
      "prefix_topk_cpp(Tensor query, Tensor narrow, Tensor item_weight, int k, int shortlist, "
      "Tensor exclude_offsets, Tensor exclude_ids) -> (Tensor scores, Tensor ids)");
  m.def(
      "mrl_softmax_loss_cpp(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, "
      "Tensor weights, float temperature, bool cosine) -> (Tensor loss, Tensor lse)");
  m.def(
      "mrl_softmax_loss_backward_cpp(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, "
      "Tensor lse, int[] dims, Tensor weights, float temperature, bool cosine) "
      "-> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)");
  // not an operator of the spec: the row-sparse Adam step of mrl_kernels.optim.LazyAdam
  m.def(
      "lazy_adam_cpp(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor indices, Tensor values, "
      "float beta1, float beta2, float eps, float step_size) -> ()");
}

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) {
  m.impl("mns_sample_cpp", &mns_sample);
  m.impl("mrl_bpr_loss_cpp", &mrl_bpr_loss);
  m.impl("mrl_bpr_loss_backward_cpp", &mrl_bpr_loss_backward);
  m.impl("mns_bpr_loss_cpp", &mns_bpr_loss);
  m.impl("mns_bpr_loss_backward_cpp", &mns_bpr_loss_backward);
  m.impl("prefix_topk_cpp", &prefix_topk);
  m.impl("mrl_softmax_loss_cpp", &mrl_softmax_loss);
  m.impl("mrl_softmax_loss_backward_cpp", &mrl_softmax_loss_backward);
  m.impl("lazy_adam_cpp", &lazy_adam);
}
