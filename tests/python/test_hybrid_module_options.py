"""x-transformers' hybrid module (Hymba-style, attn_hybrid_module with attn_hybrid_fold_axial_dim and
attn_hybrid_learned_mix) given torch.nn.GRU or LSTM, run by the stack's own GRU / LSTM with the same state_dict keys,
against the pinned x-transformers: same weights, a padding mask with a fully masked row, odd lengths (outputs within
1e-5, every gradient within 1e-4); construction copies the given module into every layer as x-transformers' deepcopy;
the GRU's state through the decoding cache as x-transformers keeps it."""
import pytest
import torch
from torch import nn

from x_transformers_cpp import Decoder, Encoder
from xtc_testing import assert_constructs_as_x_transformers, assert_stack_matches_x_transformers, make_pair

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "gru": lambda: dict(attn_hybrid_module=nn.GRU(24, 24, batch_first=True), attn_hybrid_fold_axial_dim=1),
    "gru_folded_learned_mix": lambda: dict(attn_hybrid_module=nn.GRU(24, 24, batch_first=True),
                                           attn_hybrid_fold_axial_dim=3, attn_hybrid_learned_mix=True),
    "gru_bidirectional_two_layers": lambda: dict(
        attn_hybrid_module=nn.GRU(24, 12, num_layers=2, bidirectional=True, batch_first=True),
        attn_hybrid_fold_axial_dim=1),
    "gru_time_first": lambda: dict(attn_hybrid_module=nn.GRU(24, 24), attn_hybrid_fold_axial_dim=1),
    "lstm_folded": lambda: dict(attn_hybrid_module=nn.LSTM(24, 24, batch_first=True), attn_hybrid_fold_axial_dim=2),
    "lstm_projected_no_bias": lambda: dict(attn_hybrid_module=nn.LSTM(24, 30, proj_size=24, batch_first=True,
                                                                      bias=False), attn_hybrid_fold_axial_dim=1),
    "gru_cross": lambda: dict(cross_attend=True, attn_hybrid_module=nn.GRU(24, 24, batch_first=True),
                              attn_hybrid_fold_axial_dim=1, cross_attn_hybrid_learned_mix=True),
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_hybrid_module_matches_x_transformers(kind, make):
    torch.manual_seed(1)
    assert_stack_matches_x_transformers(kind, {**SMALL, **make()})


@pytest.mark.parametrize("make", [CASES["gru_folded_learned_mix"], CASES["lstm_projected_no_bias"],
                                  CASES["gru_cross"]], ids=["gru", "lstm", "gru_cross"])
def test_construction_copies_the_module_as_x_transformers(make):
    # x-transformers deep-copies the given module into every layer; the rest draws as before.
    torch.manual_seed(2)
    ours = assert_constructs_as_x_transformers("decoder", {**SMALL, **make()}, seed=5)
    torch.manual_seed(2)
    module = make()["attn_hybrid_module"]
    for name, value in module.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[f"layers.0.1.hybrid_module.fn.{name}"], value, atol=0, rtol=0)


@pytest.mark.parametrize("fold", [1, 2], ids=["unfolded", "folded"])
def test_cached_decoding_carries_the_gru_state(fold):
    torch.manual_seed(3)
    ours, theirs = make_pair("decoder", **SMALL, attn_hybrid_module=nn.GRU(24, 24, batch_first=True),
                             attn_hybrid_fold_axial_dim=fold, attn_hybrid_learned_mix=True)
    x = torch.randn(2, 9, SMALL["dim"])
    _, cache = ours(x[:, :6], return_hiddens=True)
    _, their_cache = theirs(x[:, :6], return_hiddens=True)
    for mine, their in zip(cache.attn_intermediates, their_cache.attn_intermediates):
        torch.testing.assert_close(mine.hybrid_hidden, their.hybrid_hidden, atol=1e-5, rtol=0)
    for step in (7, 8, 9):
        out, cache = ours(x[:, :step], cache=cache, return_hiddens=True)
        expected, their_cache = theirs(x[:, :step], cache=their_cache, return_hiddens=True)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        if fold == 1:  # unfolded, the recurrence continues exactly: the full forward agrees
            torch.testing.assert_close(out, ours(x[:, :step])[:, -1:], atol=1e-5, rtol=0)


def test_lstm_hybrid_does_not_cache():
    # x-transformers keeps only the LSTM's h in its cache and fails on the next step: ours says so up front.
    decoder = Decoder(**SMALL, attn_hybrid_module=nn.LSTM(24, 24, batch_first=True), attn_hybrid_fold_axial_dim=1)
    assert not decoder.can_cache_kv
    x = torch.randn(1, 5, SMALL["dim"])
    _, cache = decoder(x[:, :4], return_hiddens=True)
    with pytest.raises(ValueError, match="LSTM hybrid_module cannot decode with a cache"):
        decoder(x, cache=cache)


@pytest.mark.parametrize("options,error,message", [
    (dict(attn_hybrid_module=nn.GRU(24, 24, batch_first=True)), ValueError, "needs attn_hybrid_fold_axial_dim >= 1"),
    (dict(attn_hybrid_module=nn.GRU(24, 12, batch_first=True), attn_hybrid_fold_axial_dim=1), ValueError,
     "heads x dim_head features"),
    (dict(attn_hybrid_module=nn.GRU(16, 24), attn_hybrid_fold_axial_dim=1), ValueError, "input_size 24"),
    (dict(attn_hybrid_module=nn.GRU(24, 24), attn_hybrid_fold_axial_dim=1, unpad=True), ValueError,
     "clashes with unpad"),
    (dict(attn_hybrid_fold_axial_dim=2), ValueError, "need attn_hybrid_module"),
    (dict(attn_hybrid_module=nn.RNN(24, 24), attn_hybrid_fold_axial_dim=1), TypeError, "no libtorch twin"),
    (dict(attn_hybrid_module=nn.GRU(24, 24), attn_hybrid_fold_axial_dim=1, attn_hybrid_mask_kwarg="mask"),
     TypeError, "take no mask keyword"),
], ids=["no_fold", "narrow_output", "other_input", "unpad", "fold_alone", "plain_rnn", "mask_kwarg"])
def test_bad_hybrid_options_name_them(options, error, message):
    with pytest.raises(error, match=message):
        Encoder(**{**SMALL, **options})
