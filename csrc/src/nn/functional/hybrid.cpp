#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/gru.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/lstm.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <xtc/nn/functional/hybrid.h>
#include <xtc/nn/functional/norm.h>

#include <sstream>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

std::vector<std::pair<std::string, std::vector<int64_t>>> RecurrentSpec::weights() const {
  const int64_t gates = (lstm ? 4 : 3) * hidden_size, directions = bidirectional ? 2 : 1;
  const int64_t step_output = proj_size > 0 ? proj_size : hidden_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int64_t direction = 0; direction < directions; ++direction) {
      const std::string suffix = "_l" + std::to_string(layer) + (direction == 1 ? "_reverse" : "");
      const int64_t in = layer == 0 ? input_size : step_output * directions;
      out.push_back({"weight_ih" + suffix, {gates, in}});
      out.push_back({"weight_hh" + suffix, {gates, step_output}});
      if (bias) {
        out.push_back({"bias_ih" + suffix, {gates}});
        out.push_back({"bias_hh" + suffix, {gates}});
      }
      if (proj_size > 0) out.push_back({"weight_hr" + suffix, {proj_size, hidden_size}});
    }
  }
  return out;
}

RecurrentSpec parse_recurrent_spec(const std::string& option, const std::string& spec) {
  std::vector<std::string> fields;
  std::stringstream stream(spec);
  for (std::string field; std::getline(stream, field, ':');) fields.push_back(field);
  const auto bad = [&]() {
    return c10::str(option, ": expected \"gru|lstm:input:hidden:layers:bias:batch_first:dropout:",
                    "bidirectional:proj_size:torch|given\", got \"", spec, "\"");
  };
  TORCH_CHECK_VALUE(fields.size() == 10 && (fields[0] == "gru" || fields[0] == "lstm") &&
                        (fields[9] == "torch" || fields[9] == "given"),
                    bad());
  RecurrentSpec s;
  try {
    s.lstm = fields[0] == "lstm";
    s.input_size = std::stoll(fields[1]);
    s.hidden_size = std::stoll(fields[2]);
    s.num_layers = std::stoll(fields[3]);
    s.bias = std::stoll(fields[4]) != 0;
    s.batch_first = std::stoll(fields[5]) != 0;
    s.dropout = std::stod(fields[6]);
    s.bidirectional = std::stoll(fields[7]) != 0;
    s.proj_size = std::stoll(fields[8]);
  } catch (const std::exception&) {
    TORCH_CHECK_VALUE(false, bad());
  }
  s.given_weights = fields[9] == "given";
  TORCH_CHECK_VALUE(
      s.input_size > 0 && s.hidden_size > 0 && s.num_layers > 0 && s.proj_size >= 0 && s.dropout >= 0 &&
          s.dropout <= 1 && (s.lstm || s.proj_size == 0) && s.proj_size < s.hidden_size,
      option, ": expected positive sizes and layers, dropout in [0, 1] and proj_size (LSTM only) below ",
      "hidden_size, got \"", spec, "\"");
  return s;
}

namespace {

// x-transformers' FoldAxially: (b, n, d) padded to a multiple of `fold` and read as `fold` interleaved
// subsequences, (b fold, n / fold, d); and back.
at::Tensor fold_axially(const at::Tensor& x, int64_t fold) {
  const int64_t n = xtc::detail::static_size(x, 1), padded = (n + fold - 1) / fold * fold;
  const auto t = at::constant_pad_nd(x, {0, 0, 0, padded - n});
  return t.unflatten(1, {padded / fold, fold}).transpose(1, 2).flatten(0, 1);
}

at::Tensor unfold_axially(const at::Tensor& y, int64_t fold, int64_t n) {
  return y.unflatten(0, {-1, fold}).transpose(1, 2).flatten(1, 2).narrow(1, 0, n);
}

// The network over x (batch_first as torch reads it); `hidden` as hybrid_heads'.
at::Tensor recurrent(const at::Tensor& x, const std::vector<at::Tensor>& weights, const RecurrentSpec& s,
                     bool training, at::Tensor* hidden) {
  const int64_t batch = xtc::detail::static_size(x, s.batch_first ? 0 : 1);
  const int64_t states = s.num_layers * (s.bidirectional ? 2 : 1);
  const int64_t step_output = s.proj_size > 0 ? s.proj_size : s.hidden_size;
  const double dropout = s.dropout;
  if (s.lstm) {
    const auto h0 = at::zeros({states, batch, step_output}, x.options());
    const auto c0 = at::zeros({states, batch, s.hidden_size}, x.options());
    return std::get<0>(at::lstm(x, {h0, c0}, weights, s.bias, s.num_layers, dropout, training,
                                s.bidirectional, s.batch_first));
  }
  const at::Tensor h0 = hidden != nullptr && hidden->defined()
                            ? *hidden
                            : at::zeros({states, batch, s.hidden_size}, x.options());
  auto [out, h_n] =
      at::gru(x, h0, weights, s.bias, s.num_layers, dropout, training, s.bidirectional, s.batch_first);
  if (hidden != nullptr) *hidden = h_n;
  return out;
}

}  // namespace

at::Tensor hybrid_heads(const at::Tensor& heads, const at::Tensor& x, const HybridWeights& w,
                        const RecurrentSpec& spec, int64_t fold, bool training, at::Tensor* hidden) {
  const int64_t n = xtc::detail::static_size(x, 1);
  const auto input = fold > 1 ? fold_axially(x, fold) : x;
  auto hybrid = recurrent(input, w.recurrent, spec, training, hidden);
  if (fold > 1) hybrid = unfold_axially(hybrid, fold, n);
  const auto hybrid_heads = multihead_rms_norm(hybrid.unflatten(-1, {heads.size(2), -1}), w.hybrid_norm);
  const auto attention_heads = multihead_rms_norm(heads, w.out_norm);
  if (!w.mix.defined()) return 0.5 * (attention_heads + hybrid_heads);
  return at::lerp(attention_heads, hybrid_heads, at::sigmoid(at::linear(x, w.mix)).unsqueeze(-1));
}

}  // namespace xtc::nn::functional
