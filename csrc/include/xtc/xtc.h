// Everything public in x_transformers_cpp: options, modules, functional math and ops.
#pragma once

#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/continuous.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/nn/functional/transformer_wrapper.h>
#include <xtc/nn/modules/attention.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/feedforward.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/residual.h>
#include <xtc/nn/modules/transformer_wrapper.h>
#include <xtc/nn/options/attention.h>
#include <xtc/nn/options/attention_layers.h>
#include <xtc/nn/options/continuous.h>
#include <xtc/nn/options/feedforward.h>
#include <xtc/nn/options/transformer_wrapper.h>
#include <xtc/ops/attention_layers.h>
#include <xtc/ops/flash_attention.h>
#include <xtc/ops/flash_attention_varlen.h>
