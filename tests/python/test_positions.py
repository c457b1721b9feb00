"""Custom positions (`pos`) and rotate_num_heads against the pinned x-transformers: outputs within 1e-5, gradients
within 1e-4, on random positions (gaps, repeats) shared by the batch, per sequence, or per ALiBi head."""
import pytest
import torch

from test_options_parity import check, make_pair, option_id

BASE = dict(dim=32, depth=2, heads=4, attn_dim_head=16)


def random_positions(*shape):
    """Increasing integer positions with gaps and repeats, starting anywhere in [0, 20)."""
    steps = torch.randint(0, 4, shape)
    return torch.randint(0, 20, shape[:-1] + (1,)) + steps.cumsum(-1)


@pytest.mark.parametrize("kind,options", [
    ("encoder", dict(rotary_pos_emb=True)), ("decoder", dict(rotary_pos_emb=True, rotary_emb_dim=8)),
    ("decoder", dict(rotary_xpos=True)), ("encoder", dict(alibi_pos_bias=True)),
    ("decoder", dict(alibi_pos_bias=True, alibi_num_heads=2)),
    ("decoder", dict(rotary_pos_emb=True, alibi_pos_bias=True, attn_kv_heads=2)),
    ("encoder", dict(rotary_pos_emb=True, rotate_num_heads=2)),
], ids=lambda v: option_id(v) if isinstance(v, dict) else v)
@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared", "per_sequence"])
def test_custom_positions_match_x_transformers(kind, options, per_sequence):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **{**BASE, **options})
    b, n = 3, 10
    x = torch.randn(b, n, BASE["dim"])
    mask = torch.rand(b, n) > 0.3
    mask[:, 0] = True
    pos = random_positions(b, n) if per_sequence else random_positions(n)
    check(ours, theirs, x, pos=pos)
    check(ours, theirs, x, mask, pos=pos)


@pytest.mark.parametrize("kind,alibi_heads", [("encoder", 4), ("decoder", 2)])
def test_alibi_positions_per_head_match_x_transformers(kind, alibi_heads):
    # x-transformers' forward_custom_pos takes (b, alibi heads, n) positions: each head its own distances.
    torch.manual_seed(2)
    ours, theirs = make_pair(kind, **{**BASE, "alibi_pos_bias": True, "alibi_num_heads": alibi_heads})
    b, n = 3, 9
    x = torch.randn(b, n, BASE["dim"])
    mask = torch.rand(b, n) > 0.3
    mask[:, 0] = True
    pos = random_positions(b, alibi_heads, n)
    check(ours, theirs, x, pos=pos)
    check(ours, theirs, x, mask, pos=pos)
    with pytest.raises(ValueError, match=f"with ALiBi alone also \\(3, {alibi_heads}, 9\\)"):
        ours(x, pos=random_positions(b, alibi_heads + 1, n))


@pytest.mark.parametrize("kind,options", [
    ("encoder", dict(rotary_pos_emb=True, rotate_num_heads=1)), ("decoder", dict(rotary_pos_emb=True, rotate_num_heads=3)),
    ("decoder", dict(rotary_xpos=True, rotate_num_heads=2, attn_qk_norm=True)),
    ("encoder", dict(rotary_pos_emb=True, rotate_num_heads=4)),
], ids=lambda v: option_id(v) if isinstance(v, dict) else v)
def test_rotate_num_heads_matches_x_transformers(kind, options):
    torch.manual_seed(1)
    ours, theirs = make_pair(kind, **{**BASE, **options})
    x = torch.randn(2, 9, BASE["dim"])
    check(ours, theirs, x)


def test_rotate_num_heads_in_cached_decoding():
    torch.manual_seed(2)
    ours, theirs = make_pair("decoder", **BASE, rotary_pos_emb=True, rotate_num_heads=2)
    x = torch.randn(2, 6, BASE["dim"])
    with torch.no_grad():
        full = theirs(x)
        outs, cache = [], None
        for t in range(x.shape[1]):
            out, cache = ours(x[:, t:t + 1], cache=cache, return_hiddens=True)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_position_errors():
    from x_transformers_cpp import Decoder, Encoder

    x = torch.randn(2, 5, BASE["dim"])
    with pytest.raises(ValueError, match="rel_pos_bias"):
        Encoder(**BASE, rel_pos_bias=True)(x, pos=torch.arange(5))
    with pytest.raises(ValueError, match="integer dtype"):
        Encoder(**BASE, rotary_pos_emb=True)(x, pos=torch.arange(5.0))
    with pytest.raises(ValueError, match="cover the 5"):
        Encoder(**BASE, rotary_pos_emb=True)(x, pos=torch.arange(4))
    with pytest.raises(ValueError, match="one position per token"):
        Encoder(**BASE, alibi_pos_bias=True)(x, pos=torch.arange(6))
    with pytest.raises(ValueError, match="rotate_num_heads"):
        Decoder(**BASE, rotary_pos_emb=True, rotate_num_heads=2, attn_kv_heads=2)
    with pytest.raises(ValueError, match="rotate_num_heads"):
        Decoder(**BASE, rotary_pos_emb=True, rotate_num_heads=5)
