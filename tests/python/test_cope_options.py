"""Contextual position encoding (CoPE) against the pinned x-transformers: attn_use_cope with attn_cope_max_pos and
attn_cope_talking_heads, causal self-attention. Same weights (the zero-initialised position embeddings perturbed),
a padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4. The soft
one-hot positions (attn_cope_soft_onehot_pos) fail inside x-transformers 2.31.10 (an einx rank error), so they are
checked against the formula in float64."""
import pytest
import torch
from x_transformers_cpp import Decoder, Encoder
from x_transformers_cpp.backends import Backend
from xtc_testing import (assert_constructs_as_x_transformers, assert_stack_matches_x_transformers,
                         chosen_attention_paths, rejection_reasons)

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "cope": dict(attn_use_cope=True),
    "cope_few_positions": dict(attn_use_cope=True, attn_cope_max_pos=3),
    "cope_talking_heads": dict(attn_use_cope=True, attn_cope_talking_heads=True),
    "cope_rotary_memory_softclamp": dict(attn_use_cope=True, rotary_pos_emb=True, attn_num_mem_kv=2,
                                         attn_softclamp_logits=True, attn_logit_softclamp_value=4.0),
    "cope_selective_sink": dict(attn_use_cope=True, attn_selective=True, attn_head_learned_sink=True),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_cope_matches_x_transformers(options):
    assert_stack_matches_x_transformers("decoder", {**SMALL, **options})


def test_construction_draws_as_x_transformers():
    options = dict(SMALL, attn_use_cope=True, attn_cope_talking_heads=True, attn_pre_talking_heads=True)
    assert_constructs_as_x_transformers("decoder", options, seed=6)


def _soft_onehot_reference(x, model):
    """One layer of self-attention with CoPE's soft one-hot positions, from its parameters, in float64."""
    params = {k: v.double() for k, v in model.state_dict().items()}
    heads, dh = SMALL["heads"], SMALL["attn_dim_head"]
    b, n, _ = x.shape
    h = torch.nn.functional.layer_norm(x.double(), (x.shape[-1],), params["layers.0.0.0.gamma"] + 1)
    split = lambda t: t.view(b, n, heads, dh).transpose(1, 2)
    q, k, v = (split(h @ params[f"layers.0.1.{name}.weight"].T) for name in ("to_q", "to_k", "to_v"))
    sim = q @ k.transpose(-1, -2) * dh ** -0.5
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    sim = sim.masked_fill(future, -torch.finfo(torch.float64).max)
    pos = sim.sigmoid().flip(-1).cumsum(-1).flip(-1).clamp(max=model.layers[0][1].attend.cope.positions.numel() - 1)
    positions = params["layers.0.1.attend.cope.positions"]
    soft = torch.softmax(-(pos.unsqueeze(-1) - positions).abs() / 5e-2, -1)
    sim = sim + torch.einsum("bhijp,bhip->bhij", soft, q @ params["layers.0.1.attend.cope.pos_emb"].T)
    out = (sim.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * dh) @ params["layers.0.1.to_out.weight"].T
    return out + x.double()


def test_soft_onehot_positions_follow_the_formula():
    torch.manual_seed(2)
    model = Decoder(**{**SMALL, "depth": 1}, attn_use_cope=True, attn_cope_soft_onehot_pos=True, attn_cope_max_pos=5,
                    only_attn=True, pre_norm_has_final_norm=False)
    with torch.no_grad():
        model.layers[0][1].attend.cope.pos_emb.normal_()
    assert model.state_dict()["layers.0.1.attend.cope.positions"].dtype == torch.long  # x-transformers' buffer
    x = torch.randn(2, 9, SMALL["dim"])
    torch.testing.assert_close(model(x).double(), _soft_onehot_reference(x, model), atol=1e-5, rtol=0)
    assert model.to(torch.float64).state_dict()["layers.0.1.attend.cope.positions"].dtype == torch.long


def test_cope_materialises_and_says_why():
    layers = chosen_attention_paths(Decoder(**SMALL, attn_use_cope=True), torch.randn(2, 5, SMALL["dim"]))
    assert layers and all(c.chosen == Backend.MATH for c in layers)
    assert any("CoPE" in r for r in rejection_reasons(layers))


@pytest.mark.parametrize("cls,options,message", [
    (Encoder, dict(attn_use_cope=True), "use_cope was designed for causal self-attention"),
    (Decoder, dict(attn_use_cope=True, cross_attend=True), "set cross_attn_use_cope=False"),
    (Decoder, dict(attn_use_cope=True, attn_flash=True), "not available with attn_flash"),
    (Decoder, dict(attn_use_cope=True, attn_cope_max_pos=0), "cope_max_pos > 0"),
], ids=["encoder", "cross", "flash", "max_pos_zero"])
def test_bad_cope_options_name_them(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(**SMALL, **options)
