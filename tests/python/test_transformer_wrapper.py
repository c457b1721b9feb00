"""TransformerWrapper against x-transformers' with the same weights."""
import pytest
import torch
from x_transformers import Decoder as XDecoder, Encoder as XEncoder, TransformerWrapper as XWrapper

from x_transformers_cpp import Decoder, Encoder, TransformerWrapper
from xtc_testing import assert_parameter_grads_close, same_weights

LAYERS = dict(dim=32, depth=2, heads=4, attn_dim_head=16)
CASES = [
    dict(),
    dict(emb_dim=24, post_emb_norm=True),
    dict(num_memory_tokens=3, logits_dim=7),
    dict(tie_embedding=True),
    dict(tie_embedding=True, tie_embedding_scale=0.5),
    dict(scaled_sinu_pos_emb=True),
    dict(l2norm_embed=True),
    dict(use_abs_pos_emb=False, average_pool_embed=True),
    dict(return_only_embed=True),
    dict(max_seq_len=0),
    dict(use_cls_token=True),
    dict(use_cls_token=True, num_cls_tokens=3, num_memory_tokens=2, emb_dim=24),
    dict(logits_dim=1, squeeze_out_last_dim=True),
    dict(use_cls_token=True, logits_dim=1, squeeze_out_last_dim=True, tie_embedding=False),
]


def make_pair(kwargs, classes=(Decoder, XDecoder), layer_kwargs=LAYERS):
    kwargs = {"num_tokens": 50, "max_seq_len": 16, **kwargs}
    return same_weights(lambda: TransformerWrapper(attn_layers=classes[0](**layer_kwargs), **kwargs),
                        lambda: XWrapper(attn_layers=classes[1](**layer_kwargs), **kwargs))


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("classes", [(Decoder, XDecoder), (Encoder, XEncoder)], ids=["decoder", "encoder"])
def test_matches_x_transformers(kwargs, classes):
    torch.manual_seed(0)
    ours, theirs = make_pair(kwargs, classes)
    tokens = torch.randint(0, 50, (3, 11))
    mask = torch.rand(3, 11) > 0.3
    mask[:, 0] = True
    for m in (None, mask):
        out, expected = ours(tokens, mask=m), theirs(tokens, mask=m)
        torch.testing.assert_close(out, expected, atol=1e-5 * max(1.0, expected.abs().max().item()), rtol=0)
        assert_parameter_grads_close(ours, theirs, out, expected)
    if kwargs.get("squeeze_out_last_dim"):
        # x-transformers' forward fails there with return_embeddings (it squeezes logits it did not compute).
        assert ours(tokens, return_embeddings=True).shape[-1] == 32
        return
    torch.testing.assert_close(ours(tokens, return_embeddings=True), theirs(tokens, return_embeddings=True),
                               atol=1e-5, rtol=1e-5)


def test_rotary_stack_turns_absolute_positions_off():
    torch.manual_seed(1)
    ours, theirs = make_pair({}, (Decoder, XDecoder), dict(LAYERS, rotary_pos_emb=True))
    assert not any(k.startswith("pos_emb") for k in ours.state_dict())
    tokens = torch.randint(0, 50, (2, 20))  # longer than max_seq_len: no absolute positions to run out of
    torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-5, rtol=1e-5)


def test_bad_tokens_and_options():
    model = TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS))
    with pytest.raises(ValueError, match=r"token ids in \[0, 50\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="non-integral values"):
        model(torch.rand(1, 4) + 0.5)
    with pytest.raises(ValueError, match="at most max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="attn_z_loss_weight"):  # x-transformers' constructor never reads it
        TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS), attn_z_loss_weight=0.5)
    with pytest.raises(ValueError, match="use_cls_token and attn_pool clash"):
        TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS), use_cls_token=True,
                           attn_pool=True)
    with pytest.raises(ValueError, match="use_cls_token and average_pool_embed clash"):
        TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS), use_cls_token=True,
                           average_pool_embed=True)
    with pytest.raises(ValueError, match="a cache cannot be combined with num_memory_tokens, use_cls_token"):
        cls = TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS), use_cls_token=True)
        _, cache = cls(torch.zeros(1, 3, dtype=torch.long), return_intermediates=True)
        cls(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="tie_embedding needs emb_dim"):
        TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS), emb_dim=16, tie_embedding=True)


def test_trains_and_traces(tmp_path):
    torch.manual_seed(2)
    model = TransformerWrapper(num_tokens=50, max_seq_len=32, attn_layers=Decoder(**LAYERS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 50, (4, 12))
    losses = []
    for _ in range(15):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
    model.eval()
    traced = torch.jit.trace(model, (tokens,))
    traced.save(tmp_path / "lm.pt")
    other = torch.randint(0, 50, (2, 20))
    torch.testing.assert_close(torch.jit.load(tmp_path / "lm.pt")(other), model(other))


@pytest.mark.parametrize("kwargs,layer_kwargs", [
    (dict(), LAYERS), (dict(emb_dim=24), {**LAYERS, "rotary_pos_emb": True}),
    (dict(scaled_sinu_pos_emb=True), {**LAYERS, "alibi_pos_bias": True, "attn_kv_heads": 2}),
], ids=["abs_pos", "rotary", "sinusoidal_alibi"])
def test_cached_decoding_matches_x_transformers(kwargs, layer_kwargs):
    # x-transformers' AutoregressiveWrapper style: the whole sequence so far, the previous intermediates as cache.
    torch.manual_seed(3)
    ours, theirs = make_pair(kwargs, layer_kwargs=layer_kwargs)
    ours.eval(), theirs.eval()
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        full = theirs(tokens)
        logits, cache = ours(tokens[:, :3], return_intermediates=True)
        _, their_cache = theirs(tokens[:, :3], return_intermediates=True)
        torch.testing.assert_close(logits, full[:, :3], atol=1e-5, rtol=0)
        for t in range(4, tokens.shape[1] + 1):
            logits, cache = ours(tokens[:, :t], cache=cache, return_intermediates=True)
            expected, their_cache = theirs(tokens[:, :t], cache=their_cache, return_intermediates=True)
            assert logits.shape == expected.shape == (2, 1, 50)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(logits[:, 0], full[:, t - 1], atol=1e-5, rtol=0)
            assert cache.cache_length == their_cache.cache_length == t
    with pytest.raises(ValueError, match="whole sequence so far"):
        ours(tokens[:, -1:], cache=cache)


def test_cache_refuses_memory_tokens():
    torch.manual_seed(5)
    ours, theirs = make_pair(dict(num_memory_tokens=2))
    tokens = torch.randint(0, 50, (1, 4))
    _, cache = ours(tokens, return_intermediates=True)
    _, their_cache = theirs(tokens, return_intermediates=True)
    assert cache.cache_length == their_cache.cache_length == 6  # memory tokens count, as in x-transformers
    with pytest.raises(ValueError, match="num_memory_tokens"):
        ours(torch.randint(0, 50, (1, 5)), cache=cache)


@pytest.mark.parametrize("layer_kwargs", [dict(disable_abs_pos_emb=True),
                                          dict(rotary_pos_emb=True, disable_abs_pos_emb=False)],
                         ids=["disabled", "rotary_and_absolute"])
def test_disable_abs_pos_emb_matches_x_transformers(layer_kwargs):
    # The stack's disable_abs_pos_emb decides whether the wrapper has pos_emb, as in x-transformers.
    torch.manual_seed(4)
    ours, theirs = make_pair(dict(), layer_kwargs={**LAYERS, **layer_kwargs})
    assert ("pos_emb.emb.weight" in ours.state_dict()) == (not layer_kwargs["disable_abs_pos_emb"])
    tokens = torch.randint(0, 50, (2, 10))
    out, expected = ours(tokens), theirs(tokens)
    torch.testing.assert_close(out, expected, atol=1e-5 * max(1.0, expected.abs().max().item()), rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


@pytest.mark.parametrize("pool", [dict(), dict(attn_pool_depth=2), dict(num_pooled_tokens=3, dim_pooled_tokens=24),
                                  dict(attn_pool_depth=2, num_pooled_tokens=2, dim_pooled_tokens=20)],
                         ids=["one-attention", "cross-attender", "three-narrower", "deep-two"])
def test_attention_pool_matches_x_transformers(pool):
    # An encoder returns the pooled tokens; with return_intermediates also the logits beside them.
    torch.manual_seed(0)
    ours, theirs = make_pair(dict(attn_pool=True, **pool), (Encoder, XEncoder))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    tokens = torch.randint(0, 50, (3, 11))
    mask = torch.rand(3, 11) > 0.3
    mask[1] = False  # a fully masked row
    for m in (None, mask):
        out, expected = ours(tokens, mask=m), theirs(tokens, mask=m)
        assert out.shape == (3, pool.get("num_pooled_tokens", 1), pool.get("dim_pooled_tokens", 32))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        assert_parameter_grads_close(ours, theirs, out, expected)
    (out, inter), (want, want_inter) = (net(tokens, mask=mask, return_intermediates=True) for net in (ours, theirs))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(inter.logits, want_inter.logits, atol=1e-5, rtol=0)
    # With prepended embeddings and their mask, the pool covers them too.
    prefix, prefix_mask = torch.randn(3, 2, 32), torch.tensor([[True, False]] * 3)
    extra = dict(mask=mask, prepend_embeds=prefix, prepend_mask=prefix_mask)
    torch.testing.assert_close(ours(tokens, **extra), theirs(tokens, **extra), atol=1e-5, rtol=0)


def test_attention_pool_of_a_decoder_comes_with_the_intermediates():
    torch.manual_seed(0)
    ours, theirs = make_pair(dict(attn_pool=True, num_pooled_tokens=2))
    tokens = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-5, rtol=0)  # logits, as without the pool
    (logits, inter), (want, want_inter) = (net(tokens, return_intermediates=True) for net in (ours, theirs))
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(inter.attn_pooled_tokens, want_inter.attn_pooled_tokens, atol=1e-5, rtol=0)


class ScaledEmbedding(torch.nn.Module):
    """A token embedding of the user's own, taking a keyword argument (x-transformers' token_emb_kwargs)."""

    def __init__(self, num_tokens, dim):
        super().__init__()
        self.emb = torch.nn.Embedding(num_tokens, dim)

    def forward(self, x, scale=1.0):
        return self.emb(x) * scale


@pytest.mark.parametrize("modules", ["token_emb", "to_logits", "both"])
@pytest.mark.parametrize("extra", [dict(), dict(emb_dim=24, use_abs_pos_emb=False), dict(attn_pool=True)],
                         ids=["plain", "narrow-embedding", "attn-pool"])
def test_token_emb_and_to_logits_given_as_modules(modules, extra):
    torch.manual_seed(0)
    emb_dim = extra.get("emb_dim", 32)

    def build(wrapper, layers):
        torch.manual_seed(3)
        given = {}
        if modules in ("token_emb", "both"):
            given["token_emb"] = ScaledEmbedding(50, emb_dim)
        if modules in ("to_logits", "both"):
            given["to_logits"] = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        return wrapper(num_tokens=50, max_seq_len=16, attn_layers=layers(**LAYERS), squeeze_out_last_dim=True,
                       **given, **extra)

    classes = (Encoder, XEncoder) if extra.get("attn_pool") else (Decoder, XDecoder)
    theirs, ours = build(XWrapper, classes[1]), build(TransformerWrapper, classes[0])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    tokens, mask = torch.randint(0, 50, (3, 9)), torch.rand(3, 9) > 0.3
    call = dict(mask=mask, token_emb_kwargs=dict(scale=0.5)) if modules != "to_logits" else dict(mask=mask)
    out, expected = ours(tokens, **call), theirs(tokens, **call)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)
    (out, inter), (want, want_inter) = (net(tokens, return_intermediates=True, **call) for net in (ours, theirs))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    (logits, emb), (want_logits, want_emb) = (net(tokens, return_logits_and_embeddings=True, **call)
                                              for net in (ours, theirs))
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, want_emb, atol=1e-5, rtol=0)


def test_token_emb_module_refuses_tied_embeddings():
    with pytest.raises(ValueError, match="tie_embedding needs the wrapper's own token embedding"):
        TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Decoder(**LAYERS),
                           token_emb=ScaledEmbedding(50, 32), tie_embedding=True)
