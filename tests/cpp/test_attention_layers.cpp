// xtc::nn modules: x-transformers' parameter names, the functional/op paths agreeing, options round trips,
// training from C++, and input checks.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <xtc/xtc.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

namespace {

TEST(AttentionLayers, ParameterNamesAndShapesAreXTransformers) {
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(32, 2, 2));
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"layers.0.0.0.gamma", {32}},
      {"layers.0.1.to_q.weight", {128, 32}},
      {"layers.0.1.to_k.weight", {128, 32}},
      {"layers.0.1.to_v.weight", {128, 32}},
      {"layers.0.1.to_out.weight", {32, 128}},
      {"layers.1.0.0.gamma", {32}},
      {"layers.1.1.ff.0.0.weight", {128, 32}},
      {"layers.1.1.ff.0.0.bias", {128}},
      {"layers.1.1.ff.2.weight", {32, 128}},
      {"layers.1.1.ff.2.bias", {32}}};
  const auto params = encoder->named_parameters();
  ASSERT_EQ(params.size(), 21u);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(params[i].key(), expected[i].first);
    EXPECT_EQ(params[i].value().sizes(), c10::IntArrayRef(expected[i].second));
  }
  EXPECT_EQ(params[20].key(), "final_norm.gamma");
  EXPECT_TRUE(torch::equal(params[0].value(), torch::zeros({32})));  // unit-offset gains start at 0
}

TEST(AttentionLayers, EverySubmoduleThatOwnsParametersIsANamedModule) {
  // x-transformers' submodules, found by their names in the printed tree, each showing its options.
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 2)
                     .rotary_xpos(true)
                     .causal(true)
                     .use_adaptive_layernorm(true)
                     .use_adaptive_layerscale(true)
                     .dim_condition(8)
                     .unet_skips(true)
                     .rel_pos_bias(false);
  options.attn().qk_rmsnorm(true).head_learned_sink(true).pre_talking_heads(true).dim_head(16);
  xtc::nn::AttentionLayers layers(options);
  std::ostringstream printed;
  printed << *layers;
  for (const char* name :
       {"xtc::nn::RotaryEmbedding(8, use_xpos=true)", "xtc::nn::Residual(32)",
        "xtc::nn::AdaptiveLayerNorm(32, dim_condition=8)", "xtc::nn::AdaptiveLayerScale(32, dim_condition=8)",
        "xtc::nn::MultiheadRMSNorm(heads=2, dim_head=16)",
        "xtc::nn::Attend(heads=2, head_learned_sink=true, pre_talking_heads=true)",
        "xtc::nn::ConcatCombine(32)"})
    EXPECT_NE(printed.str().find(name), std::string::npos) << name << " not in\n" << printed.str();
  // Whatever holds tensors of its own prints as a real module of ours or of torch, never as a bare holder.
  for (const auto& item : layers->named_modules()) {
    const auto& module = *item.value();
    if (module.named_parameters(/*recurse=*/false).is_empty() &&
        module.named_buffers(/*recurse=*/false).is_empty())
      continue;
    std::ostringstream own;
    module.pretty_print(own);
    EXPECT_TRUE(own.str().rfind("xtc::nn::", 0) == 0 || own.str().rfind("torch::nn::", 0) == 0)
        << item.key() << " prints as " << own.str();
  }
  xtc::nn::AttentionLayers dynamic(xtc::nn::AttentionLayersOptions(32, 1, 4).dynamic_pos_bias(true));
  std::ostringstream dynamic_printed;
  dynamic_printed << *dynamic;
  EXPECT_NE(dynamic_printed.str().find("xtc::nn::DynamicPositionBias(32, heads=4, depth=2)"),
            std::string::npos);
}

TEST(AttentionLayers, SingleHeadHasNoOutputProjection) {
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(64, 1, 1));
  for (const auto& p : encoder->named_parameters()) EXPECT_EQ(p.key().find("to_out"), std::string::npos);
  EXPECT_THROW(xtc::nn::Encoder(xtc::nn::AttentionLayersOptions(32, 1, 1)), c10::Error);
}

TEST(AttentionLayers, ModuleAndOpAgree) {
  torch::manual_seed(0);
  auto options = xtc::nn::AttentionLayersOptions(48, 2, 3);
  options.attn().kv_heads(1);
  xtc::nn::Decoder decoder(options);
  decoder->eval();
  const auto x = torch::randn({2, 11, 48});
  const auto mask = torch::rand({2, 11}) > 0.2;
  const auto via_module = decoder->forward(x, mask);
  xtc::nn::functional::AttentionLayersInputs inputs;
  inputs.mask = mask;
  const auto via_op = xtc::ops::attention_layers(x, inputs, decoder->tensors(), decoder->options.serialize(),
                                                 /*training=*/false);
  EXPECT_TRUE(torch::equal(via_module, via_op));
  EXPECT_EQ(via_module.sizes(), x.sizes());
}

// The op's C++ API with every input of the one list (stack_inputs.h) gives the functional stack's result:
// each kind of row (tensors, lists, lists of optional masks, packed-sequence pairs) survives the trip through
// the op's arguments.
TEST(AttentionLayers, EveryStackInputReachesTheStackThroughTheOp) {
  torch::manual_seed(0);
  auto options = xtc::nn::AttentionLayersOptions(16, 2, 2).rotary_pos_emb(true).cross_attend(true);
  options.attn().dim_head(8);
  xtc::nn::AttentionLayers layers(options);
  layers->eval();
  const auto x = torch::randn({3, 5, 16});
  xtc::nn::functional::AttentionLayersInputs in;
  in.mask = torch::rand({3, 5}) > 0.3;
  in.context = torch::randn({3, 4, 16});
  in.context_mask = torch::tensor({true, true, false, true}).expand({3, 4});
  in.mems = {torch::randn({3, 2, 16}), torch::randn({3, 2, 16})};
  in.mem_masks = {torch::tensor({true, false}).expand({3, 2}), std::nullopt};
  in.in_attn_cond = torch::randn({3, 16});
  in.context_pos = torch::arange(4) * 2;
  in.causal = true;
  const auto direct = xtc::nn::functional::attention_layers(x, in, layers->tensors(), *layers->plan, false);
  const auto via_op =
      xtc::ops::attention_layers(x, in, layers->tensors(), layers->options.serialize(), false);
  EXPECT_TRUE(torch::equal(direct, via_op));
  in.causal = false;  // each input matters: the same call without the override differs
  EXPECT_FALSE(torch::allclose(
      via_op, xtc::ops::attention_layers(x, in, layers->tensors(), layers->options.serialize(), false)));

  auto packed_options = xtc::nn::AttentionLayersOptions(16, 1, 2);
  packed_options.attn().dim_head(8).flash(true).flash_pack_seq(true);
  xtc::nn::AttentionLayers packed(packed_options);
  xtc::nn::functional::AttentionLayersInputs packed_in;
  const auto offsets = torch::tensor({0, 2, 7}, torch::kInt32);
  packed_in.flash_pack_seq = xtc::nn::functional::FlashPackSeq{offsets, offsets, 5, 5};
  const auto tokens = torch::randn({1, 7, 16});
  EXPECT_TRUE(torch::equal(
      xtc::nn::functional::attention_layers(tokens, packed_in, packed->tensors(), *packed->plan, false),
      xtc::ops::attention_layers(tokens, packed_in, packed->tensors(), packed->options.serialize(), false)));
}

TEST(AttentionLayers, CausalOutputsIgnoreTheFuture) {
  torch::manual_seed(1);
  xtc::nn::Decoder decoder(xtc::nn::AttentionLayersOptions(32, 2, 2));
  auto x = torch::randn({1, 9, 32});
  const auto before = decoder->forward(x);
  auto changed = x.clone();
  changed.index_put_({0, 8}, torch::randn({32}));
  const auto after = decoder->forward(changed);
  EXPECT_TRUE(torch::allclose(before.narrow(1, 0, 8), after.narrow(1, 0, 8)));
  EXPECT_FALSE(torch::allclose(before.narrow(1, 8, 1), after.narrow(1, 8, 1)));
}

TEST(AttentionLayers, TokenByTokenDecodingWithACacheEqualsTheFullForward) {
  torch::manual_seed(2);
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 4).rotary_xpos(true).alibi_pos_bias(true);
  options.attn().kv_heads(2).dim_head(8);
  xtc::nn::Decoder decoder(options);
  decoder->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 7, 32});
  const auto full = decoder->forward(x);
  std::vector<at::Tensor> outputs, cache;
  for (int64_t t = 0; t < x.size(1); ++t) {
    xtc::nn::functional::AttentionLayersInputs inputs;
    inputs.cache_kv = cache;
    inputs.cache_length = t;
    xtc::nn::functional::AttentionLayersHiddens record;
    outputs.push_back(decoder->forward_with(x.narrow(1, t, 1), inputs, &record));
    cache = record.cached_kv;
    ASSERT_EQ(cache.size(), 4u);                                      // (k, v) of two self-attention layers
    EXPECT_EQ(cache[0].sizes(), c10::IntArrayRef({2, 2, t + 1, 8}));  // (b, kv heads, cached keys, dim_head)
  }
  EXPECT_TRUE(torch::allclose(torch::cat(outputs, 1), full, /*rtol=*/0, /*atol=*/1e-5));
  // A cache is for causal stacks only.
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(32, 2, 4));
  xtc::nn::functional::AttentionLayersInputs inputs;
  inputs.cache_kv = cache;
  EXPECT_THROW(encoder->forward_with(x.narrow(1, 0, 1), inputs), c10::ValueError);
}

TEST(AttentionLayers, ForwardWithTakesPositionsAndReturnsAttentionMaps) {
  torch::manual_seed(3);
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(32, 2, 4).alibi_pos_bias(true));
  encoder->eval();
  const auto x = torch::randn({2, 6, 32});
  xtc::nn::functional::AttentionLayersInputs plain, shifted;
  shifted.pos = torch::arange(6) * 2;  // twice the distances: a different ALiBi bias
  xtc::nn::functional::AttentionLayersHiddens record;
  const auto out = encoder->forward_with(x, plain, &record);
  EXPECT_TRUE(torch::allclose(out, encoder->forward(x), /*rtol=*/0, /*atol=*/1e-6));
  EXPECT_FALSE(torch::allclose(encoder->forward_with(x, shifted), out, /*rtol=*/0, /*atol=*/1e-4));
  ASSERT_EQ(record.attn_maps.size(), 6u);  // two layers x (qk_similarities, pre- and post-softmax)
  const auto& probabilities = record.attn_maps[2];
  EXPECT_EQ(probabilities.sizes(), c10::IntArrayRef({2, 4, 6, 6}));
  EXPECT_TRUE(torch::allclose(probabilities.sum(-1), torch::ones({2, 4, 6}), /*rtol=*/0, /*atol=*/1e-5));
}

TEST(AttentionLayers, UnpadGivesThePaddedStacksOutputsAtKeptPositions) {
  torch::manual_seed(4);
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 4).rotary_pos_emb(true);
  options.attn().dim_head(8).kv_heads(2);
  xtc::nn::Decoder padded(options);
  xtc::nn::Decoder unpadded(xtc::nn::AttentionLayersOptions(options).unpad(true));
  torch::NoGradGuard no_grad;
  for (const auto& p : padded->named_parameters()) unpadded->named_parameters()[p.key()].copy_(p.value());
  const auto x = torch::randn({3, 12, 32});
  auto mask = torch::rand({3, 12}) > 0.4;
  mask[1].fill_(false);  // a sequence with no tokens
  const auto want = padded->forward(x, mask), got = unpadded->forward(x, mask);
  const auto keep = mask.unsqueeze(-1);
  EXPECT_TRUE(torch::allclose(got * keep, want * keep, /*rtol=*/0, /*atol=*/1e-5));
  EXPECT_TRUE(got.masked_select(keep.logical_not()).eq(0).all().item<bool>());
  // Packed by the caller, FlashAttention's layout: two sequences of 5 and 7 tokens in a batch of one.
  auto packed_options = xtc::nn::AttentionLayersOptions(options);
  packed_options.attn().flash(true).flash_pack_seq(true);
  xtc::nn::Decoder packed(packed_options);
  for (const auto& p : padded->named_parameters()) packed->named_parameters()[p.key()].copy_(p.value());
  xtc::nn::functional::AttentionLayersInputs inputs;
  const auto offsets = torch::tensor({0, 5, 12}, torch::kInt);
  inputs.flash_pack_seq = xtc::nn::functional::FlashPackSeq{offsets, offsets, 7, 7};
  const auto both = packed->forward_with(x[0].unsqueeze(0), inputs);
  EXPECT_TRUE(
      torch::allclose(both.narrow(1, 0, 5), padded->forward(x[0].narrow(0, 0, 5).unsqueeze(0)), 0, 1e-5));
  EXPECT_TRUE(
      torch::allclose(both.narrow(1, 5, 7), padded->forward(x[0].narrow(0, 5, 7).unsqueeze(0)), 0, 1e-5));
}

// The layout the functional math reads is the module tree's own; on meta the same tree allocates nothing and
// draws nothing.
TEST(AttentionLayers, BuildsOnMetaWithTheLayoutOfTheCpuModule) {
  const auto options = xtc::nn::AttentionLayersOptions::parse(R"({
      "dim": 24, "depth": 2, "heads": 4, "rotary_pos_emb": true, "rotary_xpos": true, "causal": true,
      "dynamic_pos_bias": true, "dynamic_pos_bias_norm": true, "attn_num_mem_kv": 2,
      "attn_pre_talking_heads": true, "attn_gate_values": true, "ff_glu": true, "use_layerscale": true,
      "gate_residual": true, "macaron": true, "add_value_residual": true, "learned_value_residual_mix": true})");
  torch::manual_seed(3);
  const auto expected_draw = torch::randn({4});
  torch::manual_seed(3);
  auto meta = [&] {
    xtc::nn::MetaConstruction on_meta;
    return xtc::nn::AttentionLayers(options);
  }();
  EXPECT_TRUE(torch::equal(torch::randn({4}), expected_draw));  // meta construction drew nothing
  xtc::nn::AttentionLayers cpu(options);
  const auto layout = xtc::nn::layout_of(*cpu);
  ASSERT_GT(layout.size(), 30u);
  const auto meta_layout = xtc::nn::layout_of(*meta);
  ASSERT_EQ(meta_layout.size(), layout.size());
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_EQ(meta_layout[i].name, layout[i].name);
    EXPECT_EQ(meta_layout[i].shape, layout[i].shape);
    EXPECT_EQ(meta_layout[i].buffer, layout[i].buffer);
    EXPECT_EQ(cpu->plan->parameters()[i].name, layout[i].name);
  }
  for (const auto& t : meta->parameters()) EXPECT_TRUE(t.is_meta());
  for (const auto& t : meta->buffers()) EXPECT_TRUE(t.is_meta());
  EXPECT_TRUE(std::any_of(layout.begin(), layout.end(), [](const auto& spec) {
    return spec.name == "rotary_pos_emb.inv_freq" && spec.buffer;
  }));
}

// The options travel as x-transformers' keyword arguments in JSON (config.json's form).
TEST(AttentionLayers, OptionsRoundTripAndRejectUnknownKeys) {
  using Json = nlohmann::ordered_json;
  auto options = xtc::nn::AttentionLayersOptions(64, 3, 4);
  options.attn().dim_head(32).kv_heads(2).dropout(0.125);
  options.ff().mult(2.5);
  const auto text = options.serialize();
  EXPECT_EQ(xtc::nn::AttentionLayersOptions::parse(text).serialize(), text);
  const auto with = [&](const Json& more) {
    Json kwargs = Json::parse(text);
    kwargs.update(more);
    return kwargs.dump();
  };
  EXPECT_EQ(Json::parse(text)["attn_kv_heads"], 2);
  EXPECT_EQ(Json::parse(text)["ff_mult"], 2.5);
  EXPECT_THROW(xtc::nn::AttentionLayersOptions::parse(with({{"attn_talking_heads", true}})), c10::TypeError);
  EXPECT_THROW(
      xtc::nn::AttentionLayersOptions::parse(R"({"dim": 64, "depth": 2, "heads": 3, "attn_kv_heads": 2})"),
      c10::ValueError);
  EXPECT_THROW(xtc::nn::AttentionLayersOptions::parse(with({{"depth", 2.0}})),
               c10::ValueError);                                                            // not an int
  EXPECT_THROW(xtc::nn::AttentionLayersOptions::parse("dim=64;depth=2"), c10::ValueError);  // not JSON
  // A layer schedule: one feed-forward width per layer, as x-transformers' ff_mult=(4, 2, 1).
  auto scheduled =
      xtc::nn::AttentionLayersOptions::parse(with({{"ff_mult", {4, 2, 1}}, {"attn_kv_heads", {4, 2, 1}}}));
  ASSERT_EQ(scheduled.ff_per_layer().size(), 3u);
  EXPECT_EQ(scheduled.layer_feed_forward(3).mult(), 2.0);  // layer 3 is the second feed-forward
  EXPECT_EQ(scheduled.layer_attention(4).kv_heads(), 1);
  EXPECT_EQ(Json::parse(scheduled.serialize())["ff_mult"], Json({4.0, 2.0, 1.0}));
  EXPECT_EQ(xtc::nn::AttentionLayersOptions::parse(scheduled.serialize()).serialize(), scheduled.serialize());
  xtc::nn::Encoder stack(scheduled);
  EXPECT_EQ(stack->named_parameters()["layers.5.1.ff.2.weight"].sizes(), c10::IntArrayRef({64, 64}));
  EXPECT_THROW(xtc::nn::AttentionLayersOptions::parse(with({{"ff_mult", {4, 2}}})), c10::ValueError);
}

TEST(AttentionLayers, TrainsFromCpp) {
  torch::manual_seed(2);
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(32, 2, 4));
  torch::optim::Adam optimizer(encoder->parameters(), 1e-2);
  const auto x = torch::randn({4, 10, 32}), target = torch::randn({4, 10, 32});
  const auto mask = torch::rand({4, 10}) > 0.2;
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(encoder->forward(x, mask), target);
    loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first * 0.9);
}

TEST(AttentionLayers, RunsInBFloat16AsModuleAndUnderAutocast) {
  torch::manual_seed(3);
  auto options = xtc::nn::AttentionLayersOptions(48, 2, 4);
  options.rotary_pos_emb(true);
  options.attn().kv_heads(2);
  xtc::nn::Decoder decoder(options);
  decoder->eval();
  const auto x = torch::randn({2, 37, 48});
  const auto mask = torch::rand({2, 37}) > 0.2;
  torch::NoGradGuard no_grad;
  const auto full = decoder->forward(x, mask);
  decoder->to(torch::kDouble);
  const auto exact = decoder->forward(x.to(torch::kDouble), mask);
  decoder->to(torch::kFloat);
  const auto keep = mask.unsqueeze(-1);
  const double f32_error = ((full.to(torch::kDouble) - exact).abs() * keep).max().item<double>();
  {
    // Autocast as torch::autocast sets it from C++: linears and attention in bf16, the residual stream
    // float32.
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    const auto out = decoder->forward(x, mask);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    EXPECT_EQ(out.scalar_type(), torch::kFloat);
    const double error = ((out.to(torch::kDouble) - exact).abs() * keep).max().item<double>();
    EXPECT_GT(error, f32_error);  // it did run in bf16
    EXPECT_LT(error, 0.05 * exact.abs().max().item<double>());
  }
  decoder->to(torch::kBFloat16);
  const auto low = decoder->forward(x.to(torch::kBFloat16), mask);
  EXPECT_EQ(low.scalar_type(), torch::kBFloat16);
  const double error = ((low.to(torch::kDouble) - exact).abs() * keep).max().item<double>();
  EXPECT_LT(error, 0.1 * exact.abs().max().item<double>());
}

TEST(AttentionLayers, CrossAttentionOverAContextOfAnotherWidth) {
  torch::manual_seed(4);
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 4);
  options.cross_attn().dim_context(48);
  xtc::nn::CrossAttender stack(options);
  for (const auto& p : stack->named_parameters()) {
    if (p.key().find("to_k.weight") != std::string::npos) EXPECT_EQ(p.value().size(1), 48) << p.key();
    if (p.key().find("to_q.weight") != std::string::npos) EXPECT_EQ(p.value().size(1), 32) << p.key();
  }
  const auto x = torch::randn({2, 7, 32}), context = torch::randn({2, 11, 48});
  const auto out = stack->forward(x, {}, context);
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_THROW(stack->forward(x, {}, torch::randn({2, 11, 32})), c10::Error);
}

TEST(AttentionLayers, BadInputsThrowNamingTheArgument) {
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(32, 1, 2));
  const auto expect_message = [&](const torch::Tensor& x, const torch::Tensor& mask,
                                  const std::string& text) {
    try {
      encoder->forward(x, mask);
      ADD_FAILURE() << "expected an error containing " << text;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find(text), std::string::npos)
          << e.what_without_backtrace();
    }
  };
  expect_message(torch::randn({5, 32}), {}, "expected x of shape (batch, seq, 32)");
  expect_message(torch::randn({2, 5, 16}), {}, "expected x of shape (batch, seq, 32)");
  expect_message(torch::randn({2, 5, 32}), torch::ones({2, 4}, torch::kBool),
                 "expected mask of shape (2, 5)");
  expect_message(torch::randn({2, 5, 32}), torch::ones({2, 5}), "expected mask of dtype bool");
  expect_message(torch::randn({2, 5, 32}, torch::kDouble), {}, "expected x of the parameters' dtype Float");
}

// Eight std::threads running forward and backward on one shared module give the serial results.
TEST(AttentionLayers, ThreadsSharingAModuleGiveTheSerialResults) {
  torch::manual_seed(0);
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 4);
  options.rotary_pos_emb(true).attn().dim_head(8).kv_heads(2);
  xtc::nn::Decoder decoder(options);
  constexpr int kThreads = 8;
  std::vector<torch::Tensor> xs, masks;
  for (int i = 0; i < kThreads; ++i) {
    xs.push_back(torch::randn({3, 7 + 5 * i, 32}));
    masks.push_back(torch::rand({3, 7 + 5 * i}) > 0.3);
  }
  const auto run = [&](int i) {
    auto x = xs[i].clone().requires_grad_();
    auto out = decoder->forward(x, masks[i]);
    std::vector<torch::Tensor> inputs{x};
    for (const auto& p : decoder->parameters()) inputs.push_back(p);
    auto grads = torch::autograd::grad({out.square().sum()}, inputs);
    grads.insert(grads.begin(), out.detach());
    return grads;
  };
  std::vector<std::vector<torch::Tensor>> serial(kThreads), threaded(kThreads);
  for (int i = 0; i < kThreads; ++i) serial[i] = run(i);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back([&, i] { threaded[i] = run(i); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_EQ(threaded[i].size(), serial[i].size());
    for (size_t j = 0; j < serial[i].size(); ++j)
      EXPECT_TRUE(torch::allclose(threaded[i][j], serial[i][j], /*rtol=*/0, /*atol=*/1e-6))
          << "thread " << i << " tensor " << j;
  }
}

}  // namespace

namespace {

TEST(ContinuousTransformerWrapper, ProjectsPoolsAndNamesLikeXTransformers) {
  torch::manual_seed(3);
  auto options =
      xtc::nn::ContinuousTransformerWrapperOptions().dim_in(20).dim_out(6).max_seq_len(16).num_memory_tokens(
          2);
  xtc::nn::ContinuousTransformerWrapper wrapper(options,
                                                xtc::nn::Encoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
  const auto names = wrapper->named_parameters().keys();
  ASSERT_GE(names.size(), 4u);
  EXPECT_EQ(names.front(), "memory_tokens");
  EXPECT_EQ(names[1], "pos_emb.emb.weight");
  EXPECT_EQ(names.back(), "project_out.weight");
  const auto x = torch::randn({3, 9, 20});
  const auto lens = torch::tensor({9, 4, 1});
  const auto out = wrapper->forward(x, {}, lens);
  EXPECT_EQ(out.sizes(), c10::IntArrayRef({3, 9, 6}));
  EXPECT_EQ(wrapper->forward(x, {}, lens, /*return_embeddings=*/true).size(-1), 32);
  EXPECT_THROW(wrapper->forward(torch::randn({3, 17, 20})), c10::Error);  // past max_seq_len
}

}  // namespace

namespace {

// The feed-forward's activation variants from C++: SoLU inside a GLU (its norm registered before the
// projection, as x-transformers), and the situ-GLU clamps, each against the formula in float64.
TEST(FeedForward, SoluAndSoftClampedGluFromCpp) {
  torch::manual_seed(5);
  const auto x = torch::randn({2, 5, 16}, torch::kFloat64);
  xtc::nn::FeedForward solu(16, xtc::nn::FeedForwardOptions().glu(true).solu(true).mult(2));
  solu->to(torch::kFloat64);
  const auto names = solu->named_parameters().keys();
  ASSERT_EQ(names.front(), "ff.0.act.norm.gamma");
  EXPECT_EQ(names[1], "ff.0.proj.weight");
  torch::NoGradGuard no_grad;
  solu->glu->act->norm->named_parameters()["gamma"].uniform_(0.5, 1.5);
  auto halves = torch::nn::functional::linear(x, solu->glu->proj->weight, solu->glu->proj->bias).chunk(2, -1);
  const auto activated = torch::softmax(halves[1], -1) * halves[1];
  const auto normed = torch::layer_norm(activated, {32}) * solu->glu->act->norm->named_parameters()["gamma"];
  const auto want =
      torch::nn::functional::linear(halves[0] * normed, solu->proj_out->weight, solu->proj_out->bias);
  EXPECT_TRUE(torch::allclose(solu->forward(x), want, 0, 1e-12));

  xtc::nn::FeedForward situ(
      16, xtc::nn::FeedForwardOptions().glu(true).glu_softclamp(true).glu_up_softclamp_value(0.5).mult(2));
  situ->to(torch::kFloat64);
  halves = torch::nn::functional::linear(x, situ->glu->proj->weight, situ->glu->proj->bias).chunk(2, -1);
  const auto up = torch::tanh(halves[0] / 0.5) * 0.5;
  const auto gate = torch::tanh(halves[1] / 4.0) * 4.0 * torch::special::ndtr(halves[1]);
  EXPECT_TRUE(torch::allclose(
      situ->forward(x),
      torch::nn::functional::linear(up * gate, situ->proj_out->weight, situ->proj_out->bias), 0, 1e-12));
}

TEST(TransformerWrapper, LogitsFromTokensWithXTransformersNames) {
  torch::manual_seed(4);
  xtc::nn::TransformerWrapper lm(xtc::nn::TransformerWrapperOptions(50, 16).emb_dim(24).num_memory_tokens(2),
                                 xtc::nn::Decoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
  const auto names = lm->named_parameters().keys();
  EXPECT_EQ(names.front(), "memory_tokens");
  EXPECT_EQ(names[1], "token_emb.emb.weight");
  EXPECT_EQ(names.back(), "to_logits.weight");
  const auto tokens = torch::randint(0, 50, {3, 9});
  EXPECT_EQ(lm->forward(tokens).sizes(), c10::IntArrayRef({3, 9, 50}));
  EXPECT_EQ(lm->forward(tokens, {}, /*return_embeddings=*/true).sizes(), c10::IntArrayRef({3, 9, 32}));
  EXPECT_THROW(lm->forward(torch::full({1, 3}, 50, torch::kLong)), c10::Error);  // id out of the vocabulary
}

TEST(TransformerWrapper, ClsTokensGiveOneOutputPerSequence) {
  torch::manual_seed(5);
  xtc::nn::TransformerWrapper lm(
      xtc::nn::TransformerWrapperOptions(50, 16).use_cls_token(true).logits_dim(1).squeeze_out_last_dim(true),
      xtc::nn::Encoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
  EXPECT_EQ(lm->named_parameters().keys().front(), "cls_token");
  const auto tokens = torch::randint(0, 50, {3, 9});
  EXPECT_EQ(lm->forward(tokens).sizes(), c10::IntArrayRef({3}));  // one score per sequence
  EXPECT_EQ(lm->forward(tokens, {}, /*return_embeddings=*/true).sizes(), c10::IntArrayRef({3, 32}));
}

TEST(TransformerWrapper, AttentionPoolOfAnEncoderReturnsThePooledTokens) {
  torch::manual_seed(7);
  for (const int64_t depth : {1, 2}) {
    xtc::nn::TransformerWrapper lm(
        xtc::nn::TransformerWrapperOptions(50, 16).attn_pool(true).attn_pool_depth(depth).num_pooled_tokens(
            3),
        xtc::nn::Encoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
    const auto names = lm->named_parameters().keys();
    EXPECT_NE(std::find(names.begin(), names.end(), "attn_pool.queries"), names.end());
    const auto tokens = torch::randint(0, 50, {2, 9});
    const auto mask = torch::rand({2, 9}) > 0.3;
    EXPECT_EQ(lm->forward(tokens, mask).sizes(), c10::IntArrayRef({2, 3, 32}));
    EXPECT_EQ(lm->forward(tokens, mask, /*return_embeddings=*/true).sizes(), c10::IntArrayRef({2, 9, 32}));
  }
}

TEST(TransformerWrapper, TakesTheTokenEmbeddingsOfAModuleOfItsOwn) {
  torch::manual_seed(8);
  torch::nn::Embedding table(50, 32);
  xtc::nn::TransformerWrapper lm(xtc::nn::TransformerWrapperOptions(50, 16).external_token_emb(true),
                                 xtc::nn::Decoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
  const auto names = lm->named_parameters().keys();
  EXPECT_EQ(std::find(names.begin(), names.end(), "token_emb.emb.weight"), names.end());
  const auto tokens = torch::randint(0, 50, {2, 7});
  xtc::nn::functional::ExtraEmbeddings extra;
  extra.token_embeds = table->forward(tokens);
  EXPECT_EQ(lm->forward_with(tokens, {}, extra).sizes(), c10::IntArrayRef({2, 7, 50}));
  EXPECT_THROW(lm->forward(tokens), c10::Error);  // its embeddings are needed
}

TEST(TransformerWrapper, LoopedStepsRunTheStackOnItsOwnOutput) {
  torch::manual_seed(9);
  xtc::nn::AttentionLayersOptions layers(32, 2, 2);
  layers.pre_and_post_norm(true);
  xtc::nn::Decoder stack(layers);
  xtc::nn::TransformerWrapper looped(xtc::nn::TransformerWrapperOptions(50, 16).looped(true), stack);
  xtc::nn::TransformerWrapper plain(xtc::nn::TransformerWrapperOptions(50, 16), stack);  // the same stack
  {
    torch::NoGradGuard no_grad;
    for (auto& item : plain->named_parameters()) item.value().copy_(looped->named_parameters()[item.key()]);
  }
  const auto names = looped->named_parameters().keys();
  EXPECT_NE(std::find(names.begin(), names.end(), "exit_gate.weight"), names.end());
  looped->eval();
  stack->eval();
  const auto tokens = torch::randint(0, 50, {2, 7});
  xtc::nn::functional::WrapperRecurrence three;
  three.steps = 3;
  auto expected = plain->forward(tokens, {}, /*return_embeddings=*/true);
  for (int step = 1; step < 3; ++step) expected = stack->forward(expected);
  EXPECT_TRUE(torch::allclose(looped->forward_with(tokens, {}, {}, /*return_embeddings=*/true, three),
                              expected, 1e-5, 1e-5));
  // Without steps, max_looped_steps (4) run.
  EXPECT_FALSE(torch::allclose(looped->forward(tokens, {}, true), expected, 1e-3, 1e-3));
}

TEST(TransformerWrapper, RecyclingNeedsItsStepsOutsideTraining) {
  torch::manual_seed(10);
  xtc::nn::TransformerWrapper lm(xtc::nn::TransformerWrapperOptions(50, 16).recycling(true),
                                 xtc::nn::Decoder(xtc::nn::AttentionLayersOptions(32, 1, 2)));
  const auto tokens = torch::randint(0, 50, {2, 7});
  lm->eval();
  EXPECT_THROW(lm->forward(tokens), c10::Error);
  xtc::nn::functional::WrapperRecurrence two;
  two.steps = 2;
  EXPECT_EQ(lm->forward_with(tokens, {}, {}, false, two).sizes(), c10::IntArrayRef({2, 7, 50}));
  lm->train();
  EXPECT_EQ(lm->forward(tokens).sizes(), c10::IntArrayRef({2, 7, 50}));  // steps drawn
}

TEST(Wrappers, OptionsRoundTripThroughTheirFieldTables) {
  using Json = nlohmann::ordered_json;
  const auto lm = xtc::nn::TransformerWrapperOptions(50, 16)
                      .emb_dim(24)
                      .use_cls_token(true)
                      .num_cls_tokens(3)
                      .embed_num_tokens({{"type", 2}, {"segment", 5}});
  const auto text = lm.serialize();
  EXPECT_EQ(xtc::nn::TransformerWrapperOptions::parse(text).serialize(), text);
  EXPECT_EQ(xtc::nn::TransformerWrapperOptions::parse(text).num_cls_tokens(), 3);
  EXPECT_EQ(Json::parse(text)["embed_num_tokens"].dump(), R"({"type":2,"segment":5})");  // the dict's order
  EXPECT_EQ(xtc::nn::TransformerWrapperOptions::keys().size(), Json::parse(text).size());
  EXPECT_THROW(
      xtc::nn::TransformerWrapperOptions::parse(R"({"num_tokens": 50, "max_seq_len": 16, "attn_pol": 1})"),
      c10::TypeError);
  EXPECT_THROW(
      xtc::nn::TransformerWrapperOptions::parse(R"({"num_tokens": 50, "embed_num_tokens": {"type": 0}})"),
      c10::ValueError);
  const auto continuous = xtc::nn::ContinuousTransformerWrapperOptions().dim_in(20).probabilistic(true);
  const auto line = continuous.serialize();
  EXPECT_EQ(xtc::nn::ContinuousTransformerWrapperOptions::parse(line).serialize(), line);
  EXPECT_TRUE(xtc::nn::ContinuousTransformerWrapperOptions::parse(line).probabilistic());
  // A count reads None (Python's) as 0.
  EXPECT_EQ(xtc::nn::ContinuousTransformerWrapperOptions::parse(R"({"num_memory_tokens": null})")
                .num_memory_tokens(),
            0);
}

TEST(AttentionLayers, AdditionalKeyValuesAndKvResidualsFromCpp) {
  torch::manual_seed(6);
  auto options = xtc::nn::AttentionLayersOptions(32, 2, 4);
  options.attn().dim_head(8);
  xtc::nn::Decoder stack(options);
  const auto x = torch::randn({2, 5, 32});
  xtc::nn::functional::AttentionLayersInputs inputs;
  const auto plain = stack->forward_with(x, inputs);
  // Additional keys whose values are zero and whose mask hides them change nothing.
  inputs.self_attn_additional_kv = {torch::randn({2, 4, 3, 8}), torch::zeros({2, 4, 3, 8})};
  inputs.additional_kv_mask = torch::zeros({2, 3}, torch::kBool);
  EXPECT_TRUE(torch::allclose(stack->forward_with(x, inputs), plain, 1e-6, 1e-6));
  inputs.additional_kv_mask.reset();
  EXPECT_FALSE(torch::allclose(stack->forward_with(x, inputs), plain, 1e-4, 1e-4));
  inputs = {};
  inputs.self_attn_kv_residuals = torch::randn({2, 5, 32});
  EXPECT_FALSE(torch::allclose(stack->forward_with(x, inputs), plain, 1e-4, 1e-4));
  inputs.self_attn_kv_residuals = torch::randn({2, 5, 31});
  EXPECT_THROW(stack->forward_with(x, inputs), c10::Error);
  // repeat_blocks: the first block twice.
  EXPECT_EQ(options.repeat_blocks_order({{0, 0, 2}}), (std::vector<int64_t>{0, 1, 0, 1, 2, 3}));
}

}  // namespace

TEST(Attention, GatesLaserAndOrthogonalProjectionFromCpp) {
  // The HyGA gates (a low-rank value gate and a headwise output gate, through SiLU), LASER and the orthogonal
  // projection against their formulas in float64: x-transformers' Attention, one sequence, no mask.
  torch::manual_seed(6);
  const int64_t dim = 12, heads = 3, dh = 4;
  xtc::nn::Attention attn(dim, heads,
                          xtc::nn::AttentionOptions()
                              .dim_head(dh)
                              .gate_values(true)
                              .gate_values_rank(5)
                              .output_gate(true)
                              .output_gate_headwise(true)
                              .swiglu_values(true)
                              .laser(true)
                              .laser_softclamp_value(2.0)
                              .orthog_projected_values(true));
  attn->to(torch::kFloat64);
  auto params = attn->named_parameters();
  ASSERT_TRUE(params.contains("to_v_gate.down.weight") && params.contains("to_output_gate.weight"));
  EXPECT_EQ(params["to_out.weight"].size(1), heads * dh);
  torch::NoGradGuard no_grad;
  for (auto& p : params) p.value().normal_(0, 0.3);  // the gates start at zero: give them values
  const auto x = torch::randn({1, 7, dim}, torch::kFloat64);
  const auto linear = [](const at::Tensor& t, const at::Tensor& w) {
    return torch::nn::functional::linear(t, w);
  };
  const auto split = [&](const at::Tensor& t) { return t.view({1, 7, heads, dh}).transpose(1, 2); };
  const auto q = split(linear(x, params["to_q.weight"])), k = split(linear(x, params["to_k.weight"]));
  const auto v = linear(x, params["to_v.weight"]);
  const auto laser_v = torch::exp(torch::tanh(split(v) / 2.0) * 2.0);
  const auto probs = torch::softmax(torch::matmul(q, k.transpose(-1, -2)) / 2.0, -1);
  auto out = torch::log(torch::matmul(probs, laser_v)).transpose(1, 2).reshape({1, 7, heads * dh});
  const auto value_gate =
      linear(torch::silu(linear(x, params["to_v_gate.down.weight"])), params["to_v_gate.up.weight"]);
  const auto output_gate = linear(out, params["to_output_gate.weight"]).unsqueeze(-1);  // (1, 7, heads, 1)
  out = (out.view({1, 7, heads, dh}) * torch::silu(value_gate.view({1, 7, heads, dh}) + output_gate))
            .reshape({1, 7, heads * dh});
  const auto unit = v.flatten(1) / v.flatten(1).norm(2, -1, true);
  const auto flat = out.flatten(1);
  out = (flat - (flat * unit).sum(-1, true) * unit).view_as(out);
  EXPECT_TRUE(torch::allclose(attn->forward(x), linear(out, params["to_out.weight"]), 0, 1e-12));
}

TEST(Norm, DerfFromCpp) {
  torch::manual_seed(7);
  xtc::nn::Derf derf(6, /*unit_offset=*/true);
  derf->to(torch::kFloat64);
  EXPECT_EQ(derf->named_parameters().keys(), (std::vector<std::string>{"alpha", "s", "gamma", "beta"}));
  EXPECT_DOUBLE_EQ(derf->alpha.item<double>(), -0.5);  // 0.5, stored less the unit offset
  torch::NoGradGuard no_grad;
  for (auto& p : derf->parameters()) p.normal_();
  const auto x = torch::randn({2, 3, 6}, torch::kFloat64);
  const auto want = torch::erf(x * (derf->alpha + 1) + derf->s) * (derf->gamma + 1) + derf->beta;
  EXPECT_TRUE(torch::allclose(derf->forward(x), want, 0, 1e-12));
}
