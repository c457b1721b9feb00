#include <xtc/nn/functional/attention.h>
#include <xtc/nn/modules/attention.h>

namespace xtc::nn {

AttentionImpl::AttentionImpl(int64_t dim, int64_t heads, AttentionOptions options, bool causal)
    : dim(dim), heads(heads), options(options), causal(causal) {
  reset();
}

void AttentionImpl::reset() {
  const int64_t kv_heads = options.one_kv_head() ? 1 : options.kv_heads().value_or(heads);
  TORCH_CHECK_VALUE(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
                    "Attention: expected kv_heads to divide heads (", heads, "), got ", kv_heads);
  const int64_t inner = heads * options.dim_head(), kv_inner = kv_heads * options.dim_head();
  const auto no_bias = [](int64_t in, int64_t out) { return torch::nn::LinearOptions(in, out).bias(false); };
  to_q = register_module("to_q", torch::nn::Linear(no_bias(dim, inner)));
  to_k = register_module("to_k", torch::nn::Linear(no_bias(dim, kv_inner)));
  to_v = register_module("to_v", torch::nn::Linear(no_bias(dim, kv_inner)));
  // x-transformers has no output projection with a single head.
  if (heads > 1) to_out = register_module("to_out", torch::nn::Linear(no_bias(inner, dim)));
}

void AttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Attention(dim=" << dim << ", heads=" << heads << ", dim_head=" << options.dim_head();
  if (causal) stream << ", causal=true";
  stream << ")";
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  const int64_t kv_heads = to_k->weight.size(0) / options.dim_head();
  const functional::AttentionConfig config{heads, kv_heads, options.dim_head(), causal, options.dropout()};
  return functional::attention(x, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, to_q->weight,
                               to_k->weight, to_v->weight, to_out ? to_out->weight : at::Tensor(), config,
                               is_training());
}

}  // namespace xtc::nn
