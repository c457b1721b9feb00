// A directory that save_pretrained wrote (from Python, ours or x-transformers'), loaded without Python:
// config.json holds the model's x-transformers keyword arguments, model.safetensors its state_dict under
// x-transformers' names.
//
//   auto lm = xtc::nn::transformer_wrapper_from_pretrained("my-lm");
//   auto encoder = xtc::nn::stack_from_pretrained<xtc::nn::Encoder>("my-encoder");
#pragma once

#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/transformer_wrapper.h>

#include <string>
#include <vector>

namespace xtc::nn {

/// The tensors of a safetensors file into `tensors`, named by `specs` (a module's layout, in order): each
/// name present with its shape and dtype, and no other name in the file. Throws c10::ValueError naming the
/// file and the key (a missing, truncated or corrupt file included) before any tensor is written.
void load_safetensors(const std::string& path, const std::vector<functional::ParameterSpec>& specs,
                      const std::vector<at::Tensor>& tensors);

/// safetensors' name of a dtype ("F32", "BF16", ...); torch's for a dtype a state_dict does not hold.
/// Python's loader names dtypes by it too, so both loaders word a mismatch alike.
std::string safetensors_dtype_name(at::ScalarType dtype);

/// The stack in `directory` as the class it was saved from (config.json holds a stack's keyword arguments
/// alone): Encoder, Decoder, CrossAttender or AttentionLayers.
template <class Stack>
Stack stack_from_pretrained(const std::string& directory);

/// A wrapper in `directory`: its keyword arguments, its stack's under "attn_layers" and the stack's class
/// under "attn_layers_class".
TransformerWrapper transformer_wrapper_from_pretrained(const std::string& directory);
ContinuousTransformerWrapper continuous_wrapper_from_pretrained(const std::string& directory);

}  // namespace xtc::nn
