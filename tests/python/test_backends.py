"""The backend setting (x_transformers_cpp.backends): which kernel families may run, forcing one, and the recorded
reasons of each choice, at the layer level (flash kernel, varlen op, materialised scores) and in the CPU op (bf16
units or widened)."""
import threading

import pytest
import torch

from x_transformers_cpp import Encoder
from x_transformers_cpp.backends import (Backend, attention_backend, backend_priority, enabled_backends,
                                         record_choices)
from xtc_testing import random_mask

HAS_BF16_UNITS = "avx512_bf16" in open("/proc/cpuinfo").read()
OFF_BY_DEFAULT = (Backend.CUDA_VARLEN, Backend.CUDA_SDPA_FP32, Backend.CUDA_VARLEN_ONE_LAUNCH,
                  Backend.CUDA_FP32_AS_BF16, Backend.CUDA_FP32_TENSOR_CORES)
DEFAULT = [b for b in Backend if b not in OFF_BY_DEFAULT]


def encoder_and_input(**kwargs):
    torch.manual_seed(0)
    encoder = Encoder(dim=32, depth=2, heads=4, attn_dim_head=8, **kwargs).eval()
    g = torch.Generator().manual_seed(1)
    return encoder, torch.randn(3, 13, 32, generator=g), random_mask(3, 13, g)


def test_defaults_are_every_family_but_the_untested_cuda_routes_and_come_back_after_a_block():
    assert enabled_backends() == DEFAULT and backend_priority() == []
    with attention_backend([Backend.MATH, Backend.CPU_FLASH], set_priority=True):
        assert enabled_backends() == [Backend.CPU_FLASH, Backend.MATH]  # declaration order
        assert backend_priority() == [Backend.MATH, Backend.CPU_FLASH]
        with attention_backend("cpu_flash"):
            assert enabled_backends() == [Backend.CPU_FLASH] and backend_priority() == []
        assert backend_priority() == [Backend.MATH, Backend.CPU_FLASH]
    assert enabled_backends() == DEFAULT and backend_priority() == []
    with pytest.raises(RuntimeError), attention_backend(Backend.MATH):
        raise RuntimeError("restored on an exception too")
    assert enabled_backends() == DEFAULT


def test_the_setting_is_process_wide():
    seen = []
    with attention_backend(Backend.MATH):
        thread = threading.Thread(target=lambda: seen.extend(enabled_backends()))
        thread.start()
        thread.join()
    assert seen == [Backend.MATH]


def test_unknown_or_repeated_names_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; expected one of cpu_flash"):
        with attention_backend("flash"):
            pass
    with pytest.raises(ValueError, match="cpu_flash is listed twice"):
        with attention_backend([Backend.CPU_FLASH, Backend.CPU_FLASH]):
            pass
    assert enabled_backends() == DEFAULT


def test_each_layer_records_its_path_and_math_gives_the_flash_numbers():
    encoder, x, mask = encoder_and_input()
    with torch.no_grad(), record_choices() as choices:
        flash = encoder(x, mask=mask)
    assert [c.site for c in choices] == ["self-attention layer"] * 2
    assert all(c.chosen == Backend.CPU_FLASH and c.rejected == {} for c in choices)
    with torch.no_grad(), attention_backend(Backend.MATH), record_choices() as choices:
        math = encoder(x, mask=mask)
    assert [c.chosen for c in choices] == [Backend.MATH] * 2
    assert "disabled by the backend setting" in choices[0].rejected[Backend.CPU_FLASH][0]
    torch.testing.assert_close(math, flash, atol=1e-5, rtol=0)
    with attention_backend([Backend.MATH, Backend.CPU_FLASH], set_priority=True), record_choices() as choices:
        encoder(x, mask=mask)
    assert [c.chosen for c in choices] == [Backend.MATH] * 2


def test_a_rule_the_kernel_cannot_express_is_named_and_forcing_the_kernel_lists_every_reason():
    encoder, x, mask = encoder_and_input(attn_pre_talking_heads=True, attn_sparse_topk=4)
    with record_choices() as choices:
        encoder(x, mask=mask)
    assert [c.chosen for c in choices] == [Backend.MATH] * 2
    reasons = choices[0].rejected[Backend.CPU_FLASH]
    assert reasons == ["talking heads mix the scores of every head", "top-k sparsity needs each row's scores at once"]
    with attention_backend(Backend.CPU_FLASH):
        with pytest.raises(RuntimeError, match=r"(?s)self-attention layer: no enabled attention backend can run this "
                           r"call \(enabled: cpu_flash\).*cpu_flash: talking heads.*top-k sparsity.*math: disabled"):
            encoder(x, mask=mask)


def test_training_with_dropout_takes_math_and_says_why():
    encoder, x, mask = encoder_and_input(attn_dropout=0.1)
    with record_choices() as choices:
        encoder.train()(x, mask=mask)
    assert choices[0].chosen == Backend.MATH
    assert choices[0].rejected[Backend.CPU_FLASH] == ["attention dropout in training needs the probabilities"]
    with record_choices() as choices, torch.no_grad():
        encoder.eval()(x, mask=mask)
    assert choices[0].chosen == Backend.CPU_FLASH


def test_unpad_attends_in_the_varlen_op_or_in_the_padded_frame_when_it_is_disabled():
    encoder, x, mask = encoder_and_input(unpad=True)
    with torch.no_grad(), record_choices() as choices:
        varlen = encoder(x, mask=mask)
    assert [c.chosen for c in choices] == [Backend.VARLEN] * 2
    without_varlen = [b for b in DEFAULT if b != Backend.VARLEN]
    with torch.no_grad(), attention_backend(without_varlen), record_choices() as choices:
        frame = encoder(x, mask=mask)
    assert [c.chosen for c in choices] == [Backend.CPU_FLASH] * 2
    assert "disabled by the backend setting" in choices[0].rejected[Backend.VARLEN][0]
    torch.testing.assert_close(frame, varlen, atol=1e-5, rtol=0)


def test_alibi_over_sequences_with_holes_keeps_them_out_of_the_varlen_op():
    encoder, x, mask = encoder_and_input(unpad=True, alibi_pos_bias=True)
    mask[2] = torch.arange(13) % 3 != 0  # kept positions that are not one span
    with torch.no_grad(), record_choices() as choices:
        encoder(x, mask=mask)
    assert choices[0].chosen == Backend.CPU_FLASH
    assert choices[0].rejected[Backend.VARLEN] == [
        "ALiBi or a window over sequences whose kept positions are not one span"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_cpu_op_records_whether_bf16_runs_on_the_bf16_units(dtype):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 9, 4, 16, generator=g).to(dtype) for _ in range(3))
    with record_choices() as choices:
        torch.ops.xtc.flash_attention(q, k, v)
    (choice,) = choices
    assert choice.site == "flash_attention (CPU forward)"
    if dtype == torch.bfloat16 and HAS_BF16_UNITS:
        assert choice.chosen == Backend.CPU_BF16_MATMUL
    else:
        assert choice.chosen == Backend.CPU_FLASH
        assert choice.rejected[Backend.CPU_BF16_MATMUL]
    with attention_backend([Backend.CPU_FLASH]), record_choices() as choices:
        widened = torch.ops.xtc.flash_attention(q, k, v)[0]
    assert choices[0].chosen == Backend.CPU_FLASH
    assert "disabled by the backend setting" in choices[0].rejected[Backend.CPU_BF16_MATMUL][0]
    assert widened.dtype == dtype


def test_the_cpu_op_refuses_to_run_with_its_kernel_disabled():
    q = torch.randn(1, 5, 2, 8)
    with attention_backend(Backend.MATH):
        with pytest.raises(RuntimeError, match=r"flash_attention \(CPU forward\): no enabled attention backend.*"
                           r"\n  cpu_flash: disabled by the backend setting"):
            torch.ops.xtc.flash_attention(q, q, q)


def test_gradients_under_math_match_the_flash_kernels():
    encoder, x, mask = encoder_and_input()
    x.requires_grad_(True)
    grads = []
    for backends in (DEFAULT, [Backend.MATH]):
        with attention_backend(backends):
            out = encoder(x, mask=mask)
            grads.append(torch.autograd.grad(out, x, torch.ones_like(out))[0])
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=0)
