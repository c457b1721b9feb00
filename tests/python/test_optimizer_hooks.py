"""The methods x-transformers' models carry for their optimisers, against the pinned x-transformers: muon_parameters()
(which parameters go to Muon, in its order) and attn_qk_clip_ (Kimi's qk-clip from a forward's intermediates), on the
stacks and on the wrappers."""
import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper

from x_transformers_cpp import Decoder, TransformerWrapper
from xtc_testing import make_pair, random_mask, same_weights

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)


def _names(module, params):
    by_id = {id(p): name for name, p in module.named_parameters()}
    return [by_id[id(p)] for p in params]


@pytest.mark.parametrize("options", [dict(), dict(cross_attend=True, ff_glu=True, attn_on_attn=True),
                                     dict(macaron=True, use_layerscale=True, ff_post_act_ln=True, shift_tokens=1)],
                         ids=["plain", "cross_glu_on_attn", "macaron_layerscale"])
def test_muon_parameters_are_x_transformers(options):
    ours, theirs = make_pair("decoder", **SMALL, **options)
    names = _names(ours, ours.muon_parameters())
    assert names and names == _names(theirs, theirs.muon_parameters())


@pytest.mark.parametrize("kind,options", [("encoder", dict()), ("decoder", dict(cross_attend=True))],
                         ids=["encoder", "decoder_cross"])
def test_qk_clip_scales_the_weights_as_x_transformers(kind, options):
    torch.manual_seed(3)
    ours, theirs = make_pair(kind, **SMALL, **options)
    x, mask = torch.randn(2, 9, SMALL["dim"]) * 4, random_mask(2, 9)
    kwargs = dict(context=torch.randn(2, 5, SMALL["dim"])) if options.get("cross_attend") else {}
    _, mine = ours(x, mask=mask, return_hiddens=True, **kwargs)
    _, their = theirs(x, mask=mask, return_hiddens=True, **kwargs)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.attn_qk_clip_(mine, tau=0.5)  # small enough to clip every head
    theirs.attn_qk_clip_(their, tau=0.5)
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
    assert not torch.equal(before["layers.0.1.to_q.weight"], ours.state_dict()["layers.0.1.to_q.weight"])


def test_wrapper_hands_the_hooks_to_its_stack():
    torch.manual_seed(4)
    kwargs = dict(num_tokens=17, max_seq_len=16)
    ours, theirs = same_weights(lambda: TransformerWrapper(**kwargs, attn_layers=Decoder(**SMALL)),
                                lambda: XTransformerWrapper(**kwargs, attn_layers=XDecoder(**SMALL)))
    assert _names(ours, ours.muon_parameters()) == _names(theirs, theirs.muon_parameters())
    tokens = torch.randint(0, 17, (2, 7))
    _, mine = ours(tokens, return_intermediates=True)
    _, their = theirs(tokens, return_intermediates=True)
    ours.attn_qk_clip_(mine, tau=0.3)
    theirs.attn_qk_clip_(their, tau=0.3)
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)


def test_qk_clip_needs_the_logits():
    ours, _ = make_pair("encoder", **SMALL, attn_flash=True)
    _, mine = ours(torch.randn(1, 5, SMALL["dim"]), return_hiddens=True)
    with pytest.raises(ValueError, match="no pre_softmax_attn"):
        ours.attn_qk_clip_(mine)


def test_qk_clip_needs_square_projections():
    # x-transformers broadcasts the scales over the weights' input features: with heads x dim_head != dim it fails.
    ours, _ = make_pair("encoder", dim=24, depth=1, heads=2, attn_dim_head=8)
    _, mine = ours(torch.randn(1, 5, 24), return_hiddens=True)
    with pytest.raises(ValueError, match="must be square"):
        ours.attn_qk_clip_(mine)
