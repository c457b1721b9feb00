"""Attention maps from return_hiddens (x-transformers' Intermediates: qk_similarities, pre_softmax_attn,
post_softmax_attn), against the pinned x-transformers: present where it returns them (attn_flash=False, the
default), None where it does not."""
import pytest
import torch

from test_options_parity import make_pair, option_id

BASE = dict(dim=32, depth=2, heads=4, attn_dim_head=16)

MAP_OPTIONS = [
    ("encoder", dict()), ("decoder", dict()), ("decoder", dict(alibi_pos_bias=True)),
    ("encoder", dict(rel_pos_bias=True)), ("decoder", dict(attn_num_mem_kv=2, attn_kv_heads=2)),
    ("encoder", dict(residual_attn=True)), ("decoder", dict(rotary_pos_emb=True, attn_qk_norm=True)),
    ("encoder", dict(attn_pre_talking_heads=True, attn_softclamp_logits=True, attn_logit_softclamp_value=3.0)),
    ("decoder", dict(cross_attend=True)), ("decoder", dict(attn_add_zero_kv=True, attn_num_mem_kv=1)),
    ("encoder", dict(attn_head_learned_sink=True)),
    ("decoder", dict(attn_sigmoid=True)), ("encoder", dict(attn_hard=True)),
    ("encoder", dict(attn_cog_signed=True, attn_head_learned_sink=True)),
]


@pytest.mark.parametrize("kind,options", MAP_OPTIONS, ids=lambda v: option_id(v) if isinstance(v, dict) else v)
def test_maps_match_x_transformers(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **{**BASE, **options})
    x = torch.randn(2, 9, BASE["dim"])
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    kwargs = dict(mask=mask)
    if options.get("cross_attend"):
        context_mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
        kwargs.update(context=torch.randn(2, 6, BASE["dim"]), context_mask=context_mask)
    out, inter = ours(x, return_hiddens=True, **kwargs)
    expected, their_inter = theirs(x, return_hiddens=True, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert len(inter.attn_intermediates) == len(their_inter.attn_intermediates)
    for layer, (got, want) in enumerate(zip(inter.attn_intermediates, their_inter.attn_intermediates)):
        assert got.layer_type == want.layer_type
        for field in ("qk_similarities", "pre_softmax_attn", "post_softmax_attn"):
            a, b = getattr(got, field), getattr(want, field)
            assert a is not None and a.shape == b.shape, (layer, field)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"layer {layer} {field}: {m}")
    # The maps carry gradients to the weights that made them.
    post = inter.attn_intermediates[0].post_softmax_attn
    to_q = next(p for n, p in ours.named_parameters() if n.endswith("to_q.weight"))
    (grad,) = torch.autograd.grad((post * torch.randn_like(post)).sum(), to_q)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_flash_layers_have_no_maps_as_in_x_transformers():
    torch.manual_seed(1)
    ours, theirs = make_pair("decoder", **BASE, attn_flash=True)
    x = torch.randn(2, 5, BASE["dim"])
    _, inter = ours(x, return_hiddens=True)
    _, their_inter = theirs(x, return_hiddens=True)
    for got, want in zip(inter.attn_intermediates, their_inter.attn_intermediates):
        assert got.post_softmax_attn is None and want.post_softmax_attn is None
        assert got.cached_kv is not None
