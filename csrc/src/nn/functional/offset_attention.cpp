#include "src/nn/functional/offset_attention.h"

#include <ATen/ops/exp.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/isneginf.h>
#include <ATen/ops/logaddexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <xtc/ops/flash_attention.h>

namespace xtc::nn::functional::detail {
namespace {

// One kernel call's inputs: the keys before and at the queries as given; the keys after them reversed, the
// queries reversed too, the queries' own keys in front hidden (they sit in the first part) so that the
// reversed queries line up at the keys' end.
struct Side {
  at::Tensor q, k, v, mask;
  int64_t window_left, window_right;
};

Side past_side(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
               int64_t end, const BidirectionalRule& r) {
  return {q, k.narrow(1, 0, end), v.narrow(1, 0, end), mask.narrow(1, 0, end), r.window_left, r.window_right};
}

Side future_side(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                 int64_t start, const BidirectionalRule& r) {
  const int64_t m = k.size(1), n = q.size(1);
  at::Tensor keep = mask.narrow(1, start, m - start).clone();
  keep.narrow(1, 0, n).fill_(false);
  return {q.flip(1),
          k.narrow(1, start, m - start).flip(1),
          v.narrow(1, start, m - start).flip(1),
          keep.flip(1),
          r.window_right,
          r.window_left};
}

std::tuple<at::Tensor, at::Tensor> forward_side(const Side& s, const BidirectionalRule& r) {
  return ops::flash_attention(s.q, s.k, s.v, s.mask, /*causal=*/false, r.scale, r.alibi_slopes, s.window_left,
                              s.window_right, r.softcap);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_side(const Side& s, const at::Tensor& grad_out,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const BidirectionalRule& r) {
  return ops::flash_attention_backward(grad_out, s.q, s.k, s.v, out, lse, s.mask, /*causal=*/false, r.scale,
                                       r.alibi_slopes, s.window_left, s.window_right, r.softcap);
}

BidirectionalRule saved_rule(torch::autograd::AutogradContext* ctx) {
  BidirectionalRule r;
  r.scale = ctx->saved_data["scale"].toDouble();
  r.softcap = ctx->saved_data["softcap"].toDouble();
  r.window_left = ctx->saved_data["window_left"].toInt();
  r.window_right = ctx->saved_data["window_right"].toInt();
  r.alibi_slopes = ctx->saved_data["slopes"].toOptional<at::Tensor>();
  return r;
}

class OffsetAttention : public torch::autograd::Function<OffsetAttention> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& mask, int64_t query_start,
                            const BidirectionalRule& r) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const int64_t end = query_start + q.size(1);
    const auto [out_past, lse_past] = forward_side(past_side(q, k, v, mask, end, r), r);
    const auto [out_future, lse_future] = forward_side(future_side(q, k, v, mask, query_start, r), r);
    // Merged by the log-sum-exp, (b, h, n); rows that see no key keep 0 and -inf.
    const at::Tensor lse = at::logaddexp(lse_past, lse_future.flip(-1));
    const at::Tensor none = at::isneginf(lse);
    const auto weight = [&](const at::Tensor& part) {
      return at::where(none, 0.0, at::exp(part - lse)).transpose(1, 2).unsqueeze(-1);  // (b, n, h, 1)
    };
    const at::Tensor out =
        (weight(lse_past) * out_past + weight(lse_future.flip(-1)) * out_future.flip(1)).to(q.scalar_type());
    ctx->save_for_backward({q, k, v, mask, out, lse});
    ctx->saved_data["slopes"] = r.alibi_slopes;  // constants, not inputs of the function
    ctx->saved_data["query_start"] = query_start;
    ctx->saved_data["scale"] = r.scale;
    ctx->saved_data["softcap"] = r.softcap;
    ctx->saved_data["window_left"] = r.window_left;
    ctx->saved_data["window_right"] = r.window_right;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &mask = saved[3], &out = saved[4],
                     &lse = saved[5];
    const BidirectionalRule r = saved_rule(ctx);
    const int64_t start = ctx->saved_data["query_start"].toInt(), end = start + q.size(1);
    const at::Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(out);
    // Each side's gradients from the merged output and log-sum-exp: its share of the whole softmax.
    const auto [dq_past, dk_past, dv_past] =
        backward_side(past_side(q, k, v, mask, end, r), grad, out, lse, r);
    const auto [dq_future, dk_future, dv_future] =
        backward_side(future_side(q, k, v, mask, start, r), grad.flip(1), out.flip(1), lse.flip(-1), r);
    at::Tensor dk = at::zeros_like(k), dv = at::zeros_like(v);
    dk.narrow(1, 0, end).add_(dk_past);
    dv.narrow(1, 0, end).add_(dv_past);
    dk.narrow(1, start, k.size(1) - start).add_(dk_future.flip(1));
    dv.narrow(1, start, v.size(1) - start).add_(dv_future.flip(1));
    return {dq_past + dq_future.flip(1), dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor attention_at_offset(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, int64_t query_start,
                               const BidirectionalRule& rule) {
  const at::Tensor mask =
      key_mask.has_value() ? *key_mask : at::ones({k.size(0), k.size(1)}, k.options().dtype(at::kBool));
  return OffsetAttention::apply(q, k, v, mask, query_start, rule);
}

}  // namespace xtc::nn::functional::detail
