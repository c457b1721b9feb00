// The size of the ops' plan caches (ops/plan_cache.h), summed over the kinds of plan.
#include "ops/plan_cache.h"

#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/continuous.h>
#include <xtc/nn/functional/transformer_wrapper.h>
#include <xtc/ops/attention_layers.h>

namespace xtc::ops {

size_t cached_plans() {
  return detail::PlanCache<nn::functional::AttentionLayersPlan>::instance().size() +
         detail::PlanCache<nn::functional::TransformerWrapperPlan>::instance().size() +
         detail::PlanCache<nn::functional::ContinuousTransformerPlan>::instance().size();
}

}  // namespace xtc::ops
