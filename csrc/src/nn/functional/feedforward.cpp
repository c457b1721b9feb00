#include <xtc/nn/functional/feedforward.h>

#include <ATen/ops/dropout.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>

namespace xtc::nn::functional {

at::Tensor feed_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
                        const at::Tensor& b_out, double dropout, bool training) {
  auto hidden = at::gelu(at::linear(x, w_in, b_in));
  if (training && dropout > 0) hidden = at::dropout(hidden, dropout, training);
  return at::linear(hidden, w_out, b_out);
}

}  // namespace xtc::nn::functional
