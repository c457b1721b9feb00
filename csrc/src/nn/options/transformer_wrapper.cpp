#include <c10/util/Exception.h>
#include <xtc/nn/options/transformer_wrapper.h>

#include "src/nn/options/option_json.h"

namespace xtc::nn {

TransformerWrapperOptions::TransformerWrapperOptions(int64_t num_tokens, int64_t max_seq_len)
    : num_tokens_(num_tokens), max_seq_len_(max_seq_len) {}

void TransformerWrapperOptions::validate() const {
  for (const auto& [name, count] : embed_num_tokens_)
    TORCH_CHECK_VALUE(!name.empty() && count > 0,
                      "TransformerWrapper: expected embed_num_tokens as names with counts > 0, got '", name,
                      "': ", count);
  TORCH_CHECK_VALUE(num_tokens_ > 0, "TransformerWrapper: expected num_tokens > 0, got ", num_tokens_);
  TORCH_CHECK_VALUE(max_seq_len_ >= 0, "TransformerWrapper: expected max_seq_len >= 0, got ", max_seq_len_);
  TORCH_CHECK_VALUE(!emb_dim_.has_value() || *emb_dim_ > 0, "TransformerWrapper: expected emb_dim > 0");
  TORCH_CHECK_VALUE(num_memory_tokens_ >= 0, "TransformerWrapper: expected num_memory_tokens >= 0");
  TORCH_CHECK_VALUE(emb_dropout_ >= 0 && emb_dropout_ < 1,
                    "TransformerWrapper: expected emb_dropout in [0, 1)");
  TORCH_CHECK_VALUE(!logits_dim_.has_value() || *logits_dim_ > 0,
                    "TransformerWrapper: expected logits_dim > 0");
  TORCH_CHECK_VALUE(!use_cls_token_ || num_cls_tokens_ > 0,
                    "TransformerWrapper: expected num_cls_tokens > 0, got ", num_cls_tokens_);
  TORCH_CHECK_VALUE(
      !(use_cls_token_ && average_pool_embed_),
      "TransformerWrapper: use_cls_token and average_pool_embed clash; set at most one of them");
  TORCH_CHECK_VALUE(
      !(external_token_emb_ && tie_embedding_),
      "TransformerWrapper: tie_embedding needs the wrapper's own token embedding, not a token_emb "
      "module");
  TORCH_CHECK_VALUE(!(use_cls_token_ && attn_pool_),
                    "TransformerWrapper: use_cls_token and attn_pool clash; set at most one of them");
  TORCH_CHECK_VALUE(
      !attn_pool_ || (num_pooled_tokens_ > 0 && attn_pool_depth_ > 0 && dim_pooled_tokens_.value_or(1) > 0),
      "TransformerWrapper: expected num_pooled_tokens, attn_pool_depth and dim_pooled_tokens > 0");
  TORCH_CHECK_VALUE(!(tie_embedding_ && logits_dim_.has_value() && *logits_dim_ != num_tokens_),
                    "TransformerWrapper: tie_embedding gives num_tokens logits, so logits_dim must be unset");
  TORCH_CHECK_VALUE(
      !memory_tokens_interspersed_every_.has_value() ||
          (*memory_tokens_interspersed_every_ > 0 && num_memory_tokens_ > 0 && !use_cls_token_ &&
           !average_pool_embed_ && !attn_pool_),
      "TransformerWrapper: memory_tokens_interspersed_every needs num_memory_tokens > 0, a value > 0, "
      "and clashes with use_cls_token, average_pool_embed and attn_pool");
  TORCH_CHECK_VALUE(emb_frac_gradient_ > 0 && emb_frac_gradient_ <= 1,
                    "TransformerWrapper: expected emb_frac_gradient in (0, 1], got ", emb_frac_gradient_);
  TORCH_CHECK_VALUE(num_output_heads_ >= 1 && mixture_of_softmax_k_ >= 1,
                    "TransformerWrapper: expected num_output_heads and mixture_of_softmax_k >= 1, got ",
                    num_output_heads_, " and ", mixture_of_softmax_k_);
  // x-transformers' tied head and return_only_embed come before its several heads, which it then leaves out.
  TORCH_CHECK_VALUE(
      num_output_heads_ == 1 || !(tie_embedding_ || return_only_embed_ || mixture_of_softmax_),
      "TransformerWrapper: num_output_heads > 1 clashes with tie_embedding, return_only_embed and "
      "mixture_of_softmax");
  TORCH_CHECK_VALUE(!mixture_of_softmax_ || !return_only_embed_,
                    "TransformerWrapper: mixture_of_softmax mixes the logits' softmaxes, so it needs logits "
                    "(return_only_embed off)");
  TORCH_CHECK_VALUE(
      mixture_of_softmax_ || mixture_of_softmax_k_ == 4,
      "TransformerWrapper: mixture_of_softmax_k is mixture_of_softmax's; x-transformers would ignore it");
  TORCH_CHECK_VALUE(!(recycling_ && looped_),
                    "TransformerWrapper: recycling and looped clash; set at most one");
  TORCH_CHECK_VALUE(train_max_recycle_steps_ >= 1 && max_looped_steps_ >= 1,
                    "TransformerWrapper: expected train_max_recycle_steps and max_looped_steps >= 1, got ",
                    train_max_recycle_steps_, " and ", max_looped_steps_);
  TORCH_CHECK_VALUE(!(ff_deep_embed_ && (num_memory_tokens_ > 0 || use_cls_token_)),
                    "TransformerWrapper: ff_deep_embed scales the tokens' own positions, so it clashes with "
                    "num_memory_tokens and use_cls_token");
  TORCH_CHECK_VALUE(!(add_continuous_pred_head_ && mixture_of_softmax_),
                    "TransformerWrapper: add_continuous_pred_head predicts from the embeddings, which "
                    "mixture_of_softmax expands (x-transformers would predict k of them); set at most one");
}

namespace {

// Every option, in serialisation order: serialize(), parse() and keys() follow this one table.
const std::vector<detail::OptionField<TransformerWrapperOptions>>& fields() {
  using O = TransformerWrapperOptions;
  constexpr const char* owner = "TransformerWrapper";
#define XTC_FIELD(NAME, TYPE) XTC_OPTION_FIELD(O, owner, NAME, TYPE)
  static const std::vector<detail::OptionField<O>> table = {
      XTC_FIELD(num_tokens, int64_t),
      XTC_FIELD(max_seq_len, int64_t),
      XTC_FIELD(emb_dim, std::optional<int64_t>),
      XTC_FIELD(post_emb_norm, bool),
      XTC_FIELD(emb_dropout, double),
      XTC_FIELD(num_memory_tokens, int64_t),
      XTC_FIELD(memory_tokens_interspersed_every, std::optional<int64_t>),
      XTC_FIELD(tie_embedding, bool),
      XTC_FIELD(tie_embedding_scale, std::optional<double>),
      XTC_FIELD(logits_dim, std::optional<int64_t>),
      XTC_FIELD(return_only_embed, bool),
      XTC_FIELD(use_abs_pos_emb, bool),
      XTC_FIELD(scaled_sinu_pos_emb, bool),
      XTC_FIELD(l2norm_embed, bool),
      XTC_FIELD(average_pool_embed, bool),
      XTC_FIELD(use_cls_token, bool),
      XTC_FIELD(num_cls_tokens, int64_t),
      XTC_FIELD(external_token_emb, bool),
      XTC_FIELD(squeeze_out_last_dim, bool),
      XTC_FIELD(sigsoftmax_logits, bool),
      XTC_FIELD(embed_num_tokens, detail::NamedCounts),
      XTC_FIELD(emb_frac_gradient, double),
      XTC_FIELD(num_output_heads, int64_t),
      XTC_FIELD(mixture_of_softmax, bool),
      XTC_FIELD(mixture_of_softmax_k, int64_t),
      XTC_FIELD(attn_pool, bool),
      XTC_FIELD(num_pooled_tokens, int64_t),
      XTC_FIELD(attn_pool_depth, int64_t),
      XTC_FIELD(dim_pooled_tokens, std::optional<int64_t>),
      XTC_FIELD(ff_deep_embed, bool),
      XTC_FIELD(recycling, bool),
      XTC_FIELD(train_max_recycle_steps, int64_t),
      XTC_FIELD(looped, bool),
      XTC_FIELD(max_looped_steps, int64_t),
      XTC_FIELD(add_continuous_pred_head, bool),
  };
#undef XTC_FIELD
  return table;
}

}  // namespace

std::string TransformerWrapperOptions::serialize() const {
  return detail::write_fields(fields(), *this).dump();
}

TransformerWrapperOptions TransformerWrapperOptions::parse(const std::string& json) {
  constexpr const char* owner = "TransformerWrapper";
  TransformerWrapperOptions o(0, 0);
  detail::read_fields(owner, fields(), detail::parse_object(owner, json), o);
  o.validate();
  return o;
}

std::vector<std::string> TransformerWrapperOptions::keys() { return detail::field_keys(fields()); }

}  // namespace xtc::nn
