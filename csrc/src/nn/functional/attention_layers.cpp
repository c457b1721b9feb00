#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>

#include <ATen/ops/rand.h>
#include <c10/util/irange.h>

#include <vector>

namespace xtc::nn::functional {
namespace {

// Hands out the flat parameter list in module order, checking each against the shape the options imply, so that
// a list built for other options fails loudly instead of computing garbage.
class ParameterCursor {
 public:
  ParameterCursor(at::TensorList params, const at::Tensor& x) : params_(params), x_(x) {}

  const at::Tensor& take(const char* name, std::vector<int64_t> shape) {
    TORCH_CHECK(next_ < params_.size(), "AttentionLayers: expected more parameters, ran out at ", name,
                " (got ", params_.size(), ")");
    const at::Tensor& p = params_[next_++];
    TORCH_CHECK(p.sizes() == c10::IntArrayRef(shape), "AttentionLayers: expected parameter ", name, " of shape ",
                c10::IntArrayRef(shape), ", got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == x_.scalar_type(), "AttentionLayers: expected parameter ", name,
                " of the input's dtype ", x_.scalar_type(), ", got ", p.scalar_type());
    TORCH_CHECK(p.device() == x_.device(), "AttentionLayers: expected parameter ", name, " on the input's device ",
                x_.device(), ", got ", p.device());
    return p;
  }

  void expect_end() const {
    TORCH_CHECK(next_ == params_.size(), "AttentionLayers: expected ", next_, " parameters, got ", params_.size());
  }

 private:
  at::TensorList params_;
  const at::Tensor& x_;
  size_t next_ = 0;
};

void check_inputs(const at::Tensor& x, const std::optional<at::Tensor>& mask, const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == o.dim(),
                    "AttentionLayers: expected x of shape (batch, seq, ", o.dim(), "), got ", x.sizes());
  TORCH_CHECK_VALUE(x.is_floating_point(), "AttentionLayers: expected x of a floating dtype, got ", x.scalar_type());
  if (!mask.has_value()) return;
  TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "AttentionLayers: expected mask of dtype bool (True = keep), got ",
                    mask->scalar_type());
  TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == x.size(0) && mask->size(1) == x.size(1),
                    "AttentionLayers: expected mask of shape (", x.size(0), ", ", x.size(1), "), got ", mask->sizes());
  TORCH_CHECK_VALUE(mask->device() == x.device(), "AttentionLayers: expected mask on the input's device ", x.device(),
                    ", got ", mask->device());
}

}  // namespace

at::Tensor attention_layers(const at::Tensor& x_in, const std::optional<at::Tensor>& mask, at::TensorList params,
                            const AttentionLayersOptions& o, bool training) {
  check_inputs(x_in, mask, o);
  ParameterCursor cursor(params, x_in);
  const int64_t dim = o.dim(), dim_head = o.attn().dim_head(), kv_heads = o.resolved_kv_heads();
  const int64_t inner = o.heads() * dim_head, kv_inner = kv_heads * dim_head;
  const int64_t ff_inner = static_cast<int64_t>(dim * o.ff().mult());
  const AttentionConfig attn_config{o.heads(), kv_heads, dim_head, o.causal(), o.attn().dropout()};

  at::Tensor x = x_in;
  for (const char type : o.layer_types()) {
    const auto& gamma = cursor.take("norm.gamma", {dim});
    // Layer dropout skips the whole layer, residual included (x-transformers' `layer_dropout`); the parameters are
    // still consumed so the cursor stays aligned.
    const bool skip =
        training && o.layer_dropout() > 0 && at::rand({}, at::kDouble).item<double>() < o.layer_dropout();
    if (type == 'a') {
      const auto& w_q = cursor.take("to_q.weight", {inner, dim});
      const auto& w_k = cursor.take("to_k.weight", {kv_inner, dim});
      const auto& w_v = cursor.take("to_v.weight", {kv_inner, dim});
      const at::Tensor w_out = o.heads() > 1 ? cursor.take("to_out.weight", {dim, inner}) : at::Tensor();
      if (!skip) x = x + attention(layer_norm(x, gamma), mask, w_q, w_k, w_v, w_out, attn_config, training);
    } else {
      const auto& w_in = cursor.take("ff.0.0.weight", {ff_inner, dim});
      const auto& b_in = cursor.take("ff.0.0.bias", {ff_inner});
      const auto& w_out = cursor.take("ff.2.weight", {dim, ff_inner});
      const auto& b_out = cursor.take("ff.2.bias", {dim});
      if (!skip) x = x + feed_forward(layer_norm(x, gamma), w_in, b_in, w_out, b_out, o.ff().dropout(), training);
    }
  }
  const auto& final_gamma = cursor.take("final_norm.gamma", {dim});
  cursor.expect_end();
  return layer_norm(x, final_gamma);
}

}  // namespace xtc::nn::functional
