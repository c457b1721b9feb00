#include <c10/util/Exception.h>
#include <xtc/nn/options/continuous.h>

#include "src/nn/options/option_json.h"

namespace xtc::nn {

void ContinuousTransformerWrapperOptions::validate() const {
  for (auto [name, v] :
       {std::pair<const char*, std::optional<int64_t>>{"dim_in", dim_in_}, {"dim_out", dim_out_}})
    TORCH_CHECK_VALUE(!v.has_value() || *v > 0, "ContinuousTransformerWrapper: expected ", name, " > 0, got ",
                      *v);
  TORCH_CHECK_VALUE(!max_seq_len_.has_value() || *max_seq_len_ >= 0,
                    "ContinuousTransformerWrapper: expected max_seq_len >= 0, got ",
                    max_seq_len_.value_or(0));
  TORCH_CHECK_VALUE(num_memory_tokens_ >= 0,
                    "ContinuousTransformerWrapper: expected num_memory_tokens >= 0, got ",
                    num_memory_tokens_);
  TORCH_CHECK_VALUE(emb_dropout_ >= 0 && emb_dropout_ < 1,
                    "ContinuousTransformerWrapper: expected emb_dropout in [0, 1), got ", emb_dropout_);
}

namespace {

// Every option, in serialisation order: serialize(), parse() and keys() follow this one table.
const std::vector<detail::OptionField<ContinuousTransformerWrapperOptions>>& fields() {
  using O = ContinuousTransformerWrapperOptions;
  constexpr const char* owner = "ContinuousTransformerWrapper";
#define XTC_FIELD(NAME, TYPE) XTC_OPTION_FIELD(O, owner, NAME, TYPE)
  static const std::vector<detail::OptionField<O>> table = {
      XTC_FIELD(dim_in, std::optional<int64_t>),
      XTC_FIELD(dim_out, std::optional<int64_t>),
      XTC_FIELD(max_seq_len, std::optional<int64_t>),
      XTC_FIELD(num_memory_tokens, int64_t),
      XTC_FIELD(post_emb_norm, bool),
      XTC_FIELD(emb_dropout, double),
      XTC_FIELD(use_abs_pos_emb, bool),
      XTC_FIELD(scaled_sinu_pos_emb, bool),
      XTC_FIELD(average_pool_embed, bool),
      XTC_FIELD(use_identity_if_same_dim, bool),
      XTC_FIELD(probabilistic, bool),
  };
#undef XTC_FIELD
  return table;
}

}  // namespace

std::string ContinuousTransformerWrapperOptions::serialize() const {
  return detail::write_fields(fields(), *this).dump();
}

ContinuousTransformerWrapperOptions ContinuousTransformerWrapperOptions::parse(const std::string& json) {
  constexpr const char* owner = "ContinuousTransformerWrapper";
  ContinuousTransformerWrapperOptions o;
  detail::read_fields(owner, fields(), detail::parse_object(owner, json), o);
  o.validate();
  return o;
}

std::vector<std::string> ContinuousTransformerWrapperOptions::keys() { return detail::field_keys(fields()); }

}  // namespace xtc::nn
