// CPU kernels of MNS and the MRL loss (mrl_kernels::mns_sample_cpp,
// mrl_bpr_loss_cpp, mns_bpr_loss_cpp and the two backwards), mirroring
// reference.py beside this file; their schemas are defined from spec.py (this
// file only implements them):
//   - each candidate row is read once: prefix scores are accumulated segment by
//     segment ([d_{l-1}, d_l)), keeping each level's running maximum and first
//     argmax (a per-level pool row is read up to its level's width only);
//   - the loss comes from the running maxima, no second gather;
//   - the backward adds the chosen rows' gradients into the item gradient with
//     each thread owning a range of item ids, so there are no races and the sum
//     order (batch order) does not depend on the number of threads; a masked
//     item gradient (output_mask) is never formed.

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
// item_weight) and neg (given vectors, (B, L, D)) is defined; pos and weights
// are defined when the loss is computed.
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
// with neg (vectors) grad_neg (B, L, D) is written; neither when grad_other is
// undefined (masked).
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
  const bool rows_grad = grad_other.defined();  // false: the rows' gradient is masked, never formed
  T* go = rows_grad ? grad_other.data_ptr<T>() : nullptr;

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
        if (!gather && rows_grad) {
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

  if (gather && rows_grad) {
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

// The tensors one forward reads, by name; those a launch does not read stay
// undefined: candidates + item_weight (gathered rows) or neg (given vectors);
// pos + weights when the loss is computed.
struct ForwardInputs {
  Tensor user, pos, item_weight, candidates, neg, weights;
};

// (loss, negatives, coef), each undefined where this launch does not compute it.
std::tuple<Tensor, Tensor, Tensor> forward(const ForwardInputs& in, at::IntArrayRef dims) {
  check_cpu_float(in.user, "user");
  const bool compute_loss = in.pos.defined();
  const int64_t B = in.user.size(0), L = static_cast<int64_t>(dims.size());
  const Tensor u = in.user.contiguous();
  const Tensor p = compute_loss ? in.pos.contiguous() : Tensor();
  const Tensor table = in.item_weight.defined() ? rowwise(in.item_weight) : Tensor();
  const Tensor cand = in.candidates.defined() ? in.candidates.to(at::kLong).contiguous() : Tensor();
  const Tensor n = in.neg.defined() ? rowwise(in.neg) : Tensor();
  const Tensor w = compute_loss ? in.weights.to(at::kFloat).contiguous() : Tensor();
  Tensor negatives = cand.defined() ? at::empty({B, L}, u.options().dtype(at::kLong)) : Tensor();
  Tensor loss = compute_loss ? at::empty({B}, u.options()) : Tensor();
  Tensor coef = compute_loss ? at::empty({B, L}, u.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mrl_forward_cpu", [&] {
    forward_impl<scalar_t>(u, p, table, cand, n, as_vector(dims), w, negatives, loss, coef);
  });
  return {loss, negatives, coef};
}

Tensor mns_sample(const Tensor& user, const Tensor& item_weight, const Tensor& candidates, at::IntArrayRef dims) {
  return std::get<1>(forward({.user = user, .item_weight = item_weight, .candidates = candidates}, dims));
}

std::tuple<Tensor, Tensor> mrl_bpr_loss(const Tensor& user, const Tensor& pos, const Tensor& neg,
                                        at::IntArrayRef dims, const Tensor& weights) {
  auto out = forward({.user = user, .pos = pos, .neg = neg, .weights = weights}, dims);
  return {std::get<0>(out), std::get<2>(out)};
}

std::tuple<Tensor, Tensor, Tensor> mns_bpr_loss(const Tensor& user, const Tensor& pos, const Tensor& item_weight,
                                                const Tensor& candidates, at::IntArrayRef dims,
                                                const Tensor& weights) {
  return forward({.user = user, .pos = pos, .item_weight = item_weight, .candidates = candidates, .weights = weights},
                 dims);
}

// The tensors one backward reads: negatives + item_weight (gathered rows) or
// neg (given vectors).
struct BackwardInputs {
  Tensor grad, user, pos, item_weight, negatives, neg, coef;
};

// (d user, d pos, d rows): d rows is the item table's gradient (negatives) or
// neg's; a masked gradient is returned empty (the rows' one is never formed).
std::tuple<Tensor, Tensor, Tensor> backward(const BackwardInputs& in, at::IntArrayRef dims,
                                            std::array<bool, 3> output_mask) {
  check_cpu_float(in.user, "user");
  const Tensor u = in.user.contiguous(), p = in.pos.contiguous();
  const Tensor g = in.grad.to(u.scalar_type()).contiguous(), c = in.coef.to(u.scalar_type()).contiguous();
  Tensor grad_user = at::empty(u.sizes(), u.options());
  Tensor grad_pos = at::empty(p.sizes(), p.options());
  Tensor table, ids, n, grad_rows;
  if (in.negatives.defined()) {
    table = rowwise(in.item_weight);
    ids = in.negatives.to(at::kLong).contiguous();
    if (output_mask[2]) grad_rows = at::zeros(in.item_weight.sizes(), in.item_weight.options());
  } else {
    n = rowwise(in.neg);
    if (output_mask[2]) grad_rows = at::empty(in.neg.sizes(), in.neg.options());
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mrl_backward_cpu", [&] {
    backward_impl<scalar_t>(g, u, p, table, ids, n, c, as_vector(dims), grad_user, grad_pos, grad_rows);
  });
  return masked(grad_user, grad_pos, grad_rows, output_mask, u.options());
}

std::tuple<Tensor, Tensor, Tensor> mrl_bpr_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                         const Tensor& neg, const Tensor& coef, at::IntArrayRef dims,
                                                         std::array<bool, 3> output_mask) {
  return backward({.grad = grad, .user = user, .pos = pos, .neg = neg, .coef = coef}, dims, output_mask);
}

std::tuple<Tensor, Tensor, Tensor> mns_bpr_loss_backward(const Tensor& grad, const Tensor& user, const Tensor& pos,
                                                         const Tensor& item_weight, const Tensor& negatives,
                                                         const Tensor& coef, at::IntArrayRef dims,
                                                         std::array<bool, 3> output_mask) {
  return backward({.grad = grad, .user = user, .pos = pos, .item_weight = item_weight, .negatives = negatives,
                   .coef = coef},
                  dims, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) {
  m.impl("mns_sample_cpp", &mns_sample);
  m.impl("mrl_bpr_loss_cpp", &mrl_bpr_loss);
  m.impl("mrl_bpr_loss_backward_cpp", &mrl_bpr_loss_backward);
  m.impl("mns_bpr_loss_cpp", &mns_bpr_loss);
  m.impl("mns_bpr_loss_backward_cpp", &mns_bpr_loss_backward);
}
