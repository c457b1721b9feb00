"""Packed sequences in the layer stacks.

x-transformers' packed API (attn_flash_pack_seq=True with flash_pack_seq_kwargs, and flash_pack_seq_context_kwargs
for cross-attention), against each packed sequence run alone through x-transformers; and the unpad option (the
mask's kept tokens packed at the stack's entry), against x-transformers with the mask: kept positions equal, masked
positions exactly 0. Forward within 1e-5, gradients within 1e-4 (scaled by their size); which attention path ran
(the varlen kernel or the padded frame) is checked through the profiler."""
import pytest
import torch
from x_transformers import ContinuousTransformerWrapper as XContinuous
from x_transformers import CrossAttender as XCrossAttender
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder
from x_transformers import TransformerWrapper as XTokens

from xtc_testing import perturbed_state_dict, random_mask, same_weights
from x_transformers_cpp import ContinuousTransformerWrapper, CrossAttender, Decoder, Encoder, TransformerWrapper

CLASSES = {"encoder": (Encoder, XEncoder), "decoder": (Decoder, XDecoder), "cross": (CrossAttender, XCrossAttender)}
BASE = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
PACK = dict(attn_flash=True, attn_flash_pack_seq=True)


def pair(kind, ours_extra, **kwargs):
    """(ours, theirs) with identical perturbed weights; ours built with ours_extra on top of kwargs."""
    ours_cls, theirs_cls = CLASSES[kind]
    return same_weights(lambda: ours_cls(**BASE, **kwargs, **ours_extra), lambda: theirs_cls(**BASE, **kwargs))


def offsets(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def pack_kwargs(q_lengths, k_lengths=None):
    k_lengths = q_lengths if k_lengths is None else k_lengths
    return dict(cu_seqlens_q=offsets(q_lengths), cu_seqlens_k=offsets(k_lengths), max_seqlen_q=max(q_lengths),
                max_seqlen_k=max(k_lengths))


def attention_paths(fn):
    """Runs fn under the profiler; returns (its result, which attention ran: "varlen" (the varlen kernel, which runs
    the dense kernel per sequence), "dense" (the dense kernel in the padded frame) or "materialised")."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    names = {e.key for e in prof.key_averages()}
    if "xtc::flash_attention_varlen" in names:
        return result, "varlen"
    return result, "dense" if "xtc::flash_attention" in names else "materialised"


def assert_grads_close(got, want, name=""):
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None or not g.any(), f"{name} #{i}"
            continue
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0, msg=f"{name} #{i}")


# ------------------------------------------------------------------------------------------- the packed API

LENGTHS = [5, 1, 0, 17, 9]  # an empty sequence, one of length 1, one past the kernel's 16-row blocks
PACKED_OPTIONS = {
    "rotary": (dict(rotary_pos_emb=True), "varlen"),
    "plain": (dict(), "varlen"),
    "alibi": (dict(alibi_pos_bias=True), "varlen"),
    "gqa-qk-norm": (dict(attn_kv_heads=2, attn_qk_norm=True, attn_gate_values=True), "varlen"),
    "value-residual": (dict(add_value_residual=True, rotary_pos_emb=True), "varlen"),
    "t5": (dict(rel_pos_bias=True), "materialised"),
    "dynamic-bias": (dict(dynamic_pos_bias=True), "materialised"),
    "mem-kv": (dict(attn_num_mem_kv=2), "dense"),
    "talking-heads": (dict(attn_pre_talking_heads=True), "materialised"),
}


def run_alone(theirs, x, lengths, **kwargs):
    """Each packed sequence through x-transformers alone (batch 1); empty ones give empty rows."""
    starts = offsets(lengths).tolist()
    outs = [theirs(x[:, starts[i]:starts[i + 1]], **{k: v(i) for k, v in kwargs.items()}) if lengths[i] else
            x[:, :0] for i in range(len(lengths))]
    return torch.cat(outs, 1)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("name", PACKED_OPTIONS)
def test_packed_sequences_match_each_sequence_alone(kind, name):
    torch.manual_seed(0)
    options, paths = PACKED_OPTIONS[name]
    ours, theirs = pair(kind, PACK, **options)
    x = torch.randn(1, sum(LENGTHS), BASE["dim"])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ran = attention_paths(lambda: ours(x1, flash_pack_seq_kwargs=pack_kwargs(LENGTHS)))
    expected = run_alone(theirs, x2, LENGTHS)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert ran == paths
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x1, *ours.parameters()], grad, allow_unused=True)
    want = torch.autograd.grad(expected, [x2, *theirs.parameters()], grad, allow_unused=True)
    assert_grads_close(got, want, name)


def test_packed_custom_positions_per_sequence():
    # Custom positions (rotary and ALiBi), each sequence with its own; the packed pos is their concatenation.
    torch.manual_seed(0)
    lengths = [4, 9, 6]
    for options in (dict(rotary_pos_emb=True), dict(alibi_pos_bias=True)):
        ours, theirs = pair("encoder", PACK, **options)
        pos = [torch.randperm(20)[:n].sort().values for n in lengths]
        x = torch.randn(1, sum(lengths), BASE["dim"])
        out = ours(x, pos=torch.cat(pos), flash_pack_seq_kwargs=pack_kwargs(lengths))
        expected = run_alone(theirs, x, lengths, pos=lambda i: pos[i])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["cross", "encoder"])
def test_packed_context_matches_each_sequence_alone(kind):
    torch.manual_seed(0)
    q_lengths, c_lengths = [3, 8, 1], [6, 2, 11]
    options = dict(rotary_pos_emb=True) if kind == "encoder" else {}
    extra = dict(cross_attend=True) if kind == "encoder" else {}
    ours, theirs = pair(kind, PACK, **options, **extra, cross_attn_dim_head=8)
    x = torch.randn(1, sum(q_lengths), BASE["dim"], requires_grad=True)
    context = torch.randn(1, sum(c_lengths), BASE["dim"], requires_grad=True)
    kwargs = dict(flash_pack_seq_context_kwargs=pack_kwargs(q_lengths, c_lengths))
    if kind == "encoder":
        kwargs["flash_pack_seq_kwargs"] = pack_kwargs(q_lengths)
    out, ran = attention_paths(lambda: ours(x, context=context, **kwargs))
    assert ran == "varlen"
    c_starts = offsets(c_lengths).tolist()
    expected = run_alone(theirs, x, q_lengths, context=lambda i: context[:, c_starts[i]:c_starts[i + 1]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, context, *ours.parameters()], grad, allow_unused=True)
    want = torch.autograd.grad(expected, [x, context, *theirs.parameters()], grad, allow_unused=True)
    assert_grads_close(got, want, kind)


PACKED_ERRORS = [
    (dict(), dict(), "flash_pack_seq_kwargs must be provided"),
    (dict(flash_pack_seq_kwargs="ok", mask=True), dict(), "mask"),
    (dict(flash_pack_seq_kwargs="ok"), dict(batch=2), "batch size must be 1"),
    (dict(flash_pack_seq_kwargs=dict(cu_seqlens_q=offsets([3, 4]), cu_seqlens_k=offsets([3, 4]), max_seqlen_q=4,
                                     max_seqlen_k=4)), dict(), "from 0 to the packed length 9"),
    (dict(flash_pack_seq_kwargs=dict(cu_seqlens_q=offsets([3, 6]), cu_seqlens_k=offsets([3, 6]), max_seqlen_q=5,
                                     max_seqlen_k=5)), dict(), "max_seqlen (5) to bound"),
    (dict(flash_pack_seq_kwargs=dict(cu_seqlens_q=offsets([3, 6]), cu_seqlens_k=offsets([6, 3]), max_seqlen_q=6,
                                     max_seqlen_k=6)), dict(), "cu_seqlens_q and cu_seqlens_k equal"),
    (dict(flash_pack_seq_kwargs=dict(cu_seqlens_q=offsets([3, 6]), cu_seqlens_k=offsets([3, 6]), max_seqlen_q=6)),
     dict(), "missing: max_seqlen_k"),
    (dict(flash_pack_seq_kwargs=dict(pack_kwargs([3, 6]), softmax_scale=0.1)), dict(), "unsupported: softmax_scale"),
]


@pytest.mark.parametrize("call,shape,message", PACKED_ERRORS, ids=[m for *_, m in PACKED_ERRORS])
def test_packed_api_refuses_bad_calls(call, shape, message):
    ours, _ = pair("encoder", PACK)
    x = torch.randn(shape.get("batch", 1), 9, BASE["dim"])
    call = dict(call)
    if call.get("flash_pack_seq_kwargs") == "ok":
        call["flash_pack_seq_kwargs"] = pack_kwargs([3, 6])
    if call.get("mask") is True:
        call["mask"] = torch.ones(1, 9, dtype=torch.bool)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        ours(x, **call)


def test_packed_api_needs_the_option_and_flash():
    plain = Encoder(**BASE)
    with pytest.raises(ValueError, match="attn_flash_pack_seq=True"):
        plain(torch.randn(1, 9, BASE["dim"]), flash_pack_seq_kwargs=pack_kwargs([3, 6]))
    with pytest.raises(ValueError, match="flash_pack_seq needs attn_flash"):
        Encoder(**BASE, attn_flash_pack_seq=True)
    for options in (dict(shift_tokens=1),):
        ours = Encoder(**BASE, **PACK, **options)
        with pytest.raises(ValueError, match="shift_tokens"):
            ours(torch.randn(1, 9, BASE["dim"]), flash_pack_seq_kwargs=pack_kwargs([3, 6]))


# ------------------------------------------------------------------------------------------------- unpad


def masks(batch, seq, seed):
    """Right padding (with an empty row), left padding, and a random pattern (full and fully masked rows)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[1] = 0
    position = torch.arange(seq)
    return {"right": position < lengths[:, None], "left": position >= seq - lengths[:, None],
            "pattern": random_mask(batch, seq, g)}


UNPAD_OPTIONS = {
    "plain": (dict(), "varlen"),
    "rotary": (dict(rotary_pos_emb=True), "varlen"),
    "rotary-xpos": (dict(rotary_xpos=True), "varlen"),
    "alibi": (dict(alibi_pos_bias=True), "varlen if consecutive"),
    "gqa-qk-norm-gate": (dict(attn_kv_heads=2, attn_qk_norm=True, attn_gate_values=True), "varlen"),
    "value-residual": (dict(add_value_residual=True), "varlen"),
    "sandwich-layerscale": (dict(sandwich_norm=True, use_layerscale=True, scale_residual=True), "varlen"),
    "t5": (dict(rel_pos_bias=True), "materialised"),
    "dynamic-bias": (dict(dynamic_pos_bias=True), "materialised"),
    "residual-attn": (dict(residual_attn=True), "materialised"),
    "mem-kv": (dict(attn_num_mem_kv=2), "dense"),
    "sparse-topk": (dict(attn_sparse_topk=3), "materialised"),
    "post-norm-gru": (dict(pre_norm=False, gate_residual=True), "varlen"),
}


def expected_path(rule, mask_name):
    if rule == "varlen if consecutive":
        return "varlen" if mask_name != "pattern" else "dense"
    return rule


@pytest.mark.parametrize("mask_name", ["right", "left", "pattern"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("name", UNPAD_OPTIONS)
def test_unpad_matches_the_masked_batch(name, kind, mask_name):
    torch.manual_seed(0)
    options, rule = UNPAD_OPTIONS[name]
    if kind == "encoder" and "xpos" in name:
        pytest.skip("x-transformers allows rotary_xpos only in causal stacks")
    ours, theirs = pair(kind, dict(unpad=True), **options)
    mask = masks(4, 13, seed=len(name))[mask_name]
    x = torch.randn(4, 13, BASE["dim"])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ran = attention_paths(lambda: ours(x1, mask=mask))
    expected = theirs(x2, mask=mask)
    keep = mask.unsqueeze(-1)
    torch.testing.assert_close(out * keep, expected * keep, atol=1e-5, rtol=0)
    assert out[~mask].eq(0).all()
    assert ran == expected_path(rule, mask_name)
    grad = torch.randn_like(out) * keep  # masked positions are 0 here, free in x-transformers
    got = torch.autograd.grad(out, [x1, *ours.parameters()], grad, allow_unused=True)
    want = torch.autograd.grad(expected, [x2, *theirs.parameters()], grad, allow_unused=True)
    assert_grads_close(got, want, name)


@pytest.mark.parametrize("mask_name", ["right", "pattern"])
def test_unpad_cross_attention_with_a_context_mask(mask_name):
    torch.manual_seed(0)
    ours, theirs = pair("encoder", dict(unpad=True), cross_attend=True, rotary_pos_emb=True)
    mask = masks(3, 10, seed=1)[mask_name]
    context, context_mask = torch.randn(3, 7, BASE["dim"]), masks(3, 7, seed=2)["pattern"]
    x = torch.randn(3, 10, BASE["dim"])
    for cmask in (context_mask, None):
        out, ran = attention_paths(lambda: ours(x, mask=mask, context=context, context_mask=cmask))
        expected = theirs(x, mask=mask, context=context, context_mask=cmask)
        keep = mask.unsqueeze(-1)
        torch.testing.assert_close(out * keep, expected * keep, atol=1e-5, rtol=0)
        assert ran == "varlen"


def test_unpad_with_custom_positions_attn_mask_and_attn_bias():
    torch.manual_seed(0)
    mask = masks(3, 9, seed=3)["pattern"]
    x = torch.randn(3, 9, BASE["dim"])
    ours, theirs = pair("encoder", dict(unpad=True), rotary_pos_emb=True)
    pos = torch.randint(0, 30, (3, 9)).sort(-1).values
    attn_mask = torch.rand(3, 1, 9, 9) > 0.3
    for kwargs in (dict(pos=pos), dict(attn_mask=attn_mask)):
        out, expected = ours(x, mask=mask, **kwargs), theirs(x, mask=mask, **kwargs)
        torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=0)
    ours, theirs = pair("encoder", dict(unpad=True))
    attn_bias = torch.randn(BASE["heads"], 9, 9)
    out, expected = ours(x, mask=mask, attn_bias=attn_bias), theirs(x, mask=mask, attn_bias=attn_bias)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=0)
    ours, theirs = pair("encoder", dict(unpad=True), alibi_pos_bias=True)
    pos = torch.randint(0, 30, (3, 9)).sort(-1).values
    out, expected = ours(x, mask=mask, pos=pos), theirs(x, mask=mask, pos=pos)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=0)


def test_unpad_without_a_mask_is_the_dense_stack():
    ours, theirs = pair("encoder", dict(unpad=True))
    x = torch.randn(2, 7, BASE["dim"])
    out, ran = attention_paths(lambda: ours(x))
    torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=0)
    assert ran == "dense"


def test_unpad_return_hiddens_in_the_padded_frame():
    torch.manual_seed(0)
    ours, theirs = pair("decoder", dict(unpad=True), rotary_pos_emb=True)
    mask = masks(3, 8, seed=4)["right"]
    x = torch.randn(3, 8, BASE["dim"])
    out, inter = ours(x, mask=mask, return_hiddens=True)
    _, expected = theirs(x, mask=mask, return_hiddens=True)
    keep = mask.unsqueeze(-1)
    for got, want in zip(inter.hiddens, expected.hiddens):
        torch.testing.assert_close(got * keep, want * keep, atol=1e-5, rtol=0)
    for got, want in zip(inter.attn_intermediates, expected.attn_intermediates):
        k_keep = mask[:, None, :, None]
        for g, w in zip(got.cached_kv, want.cached_kv):
            torch.testing.assert_close(g * k_keep, w * k_keep, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options,call,message", [
    (dict(shift_tokens=1), dict(), "shift_tokens"),
    (dict(), dict(seq_start_pos=torch.tensor([0, 2, 1])), "seq_start_pos"),
    (dict(), dict(self_attn_kv_mask=torch.ones(3, 6, dtype=torch.bool)), "self_attn_kv_mask"),
    (dict(), dict(mems=[torch.randn(3, 2, 32)]), "mems"),
])
def test_unpad_refuses_what_needs_the_padded_batch(options, call, message):
    ours = Encoder(**BASE, unpad=True, **options)
    with pytest.raises(ValueError, match=message):
        ours(torch.randn(3, 6, BASE["dim"]), mask=torch.rand(3, 6) > 0.3, **call)


def test_unpad_trains():
    torch.manual_seed(0)
    ours, theirs = pair("encoder", dict(unpad=True), attn_dropout=0.0, ff_dropout=0.0, layer_dropout=0.0)
    ours.train(), theirs.train()
    mask = masks(4, 11, seed=5)["pattern"]
    x = torch.randn(4, 11, BASE["dim"])
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(3):
        for module, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (module(x, mask=mask)[mask] ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(ours(x, mask=mask)[mask], theirs(x, mask=mask)[mask], atol=1e-5, rtol=0)


def test_unpad_under_autocast_within_twice_x_transformers_error():
    torch.manual_seed(0)
    ours, theirs = pair("encoder", dict(unpad=True), rotary_pos_emb=True)
    mask = masks(3, 40, seed=6)["right"]
    x = torch.randn(3, 40, BASE["dim"])
    reference = pair("encoder", {}, rotary_pos_emb=True)[1].double()
    reference.load_state_dict(theirs.state_dict())
    want = reference(x.double(), mask=mask)[mask]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours_out, theirs_out = ours(x, mask=mask)[mask], theirs(x, mask=mask)[mask]
    e_ours, e_theirs = (ours_out.double() - want).abs().max(), (theirs_out.double() - want).abs().max()
    assert e_ours <= 2 * e_theirs + 1e-3, (e_ours, e_theirs)


def test_unpad_in_a_traced_module_follows_each_mask():
    torch.manual_seed(0)
    ours, theirs = pair("encoder", dict(unpad=True), alibi_pos_bias=True)
    all_masks = masks(3, 9, seed=7)
    x = torch.randn(3, 9, BASE["dim"])
    traced = torch.jit.trace(ours, (x, all_masks["right"]))
    for mask in all_masks.values():  # consecutive and not: the traced op decides per call
        torch.testing.assert_close(traced(x, mask)[mask], theirs(x, mask=mask)[mask], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ in the wrappers


def test_unpad_in_the_wrappers():
    torch.manual_seed(0)
    layers = dict(BASE, rotary_pos_emb=True)
    theirs = XContinuous(dim_in=12, dim_out=5, max_seq_len=16, attn_layers=XEncoder(**layers))
    theirs.load_state_dict(perturbed_state_dict(theirs))
    ours = ContinuousTransformerWrapper(dim_in=12, dim_out=5, max_seq_len=16, attn_layers=Encoder(**layers, unpad=True))
    ours.load_state_dict(theirs.state_dict())
    x, lens = torch.randn(3, 10, 12), torch.tensor([10, 3, 0])
    keep = torch.arange(10) < lens[:, None]
    torch.testing.assert_close(ours(x, lens=lens)[keep], theirs(x, lens=lens)[keep], atol=1e-5, rtol=0)

    theirs = XTokens(num_tokens=40, max_seq_len=16, attn_layers=XDecoder(**BASE))
    theirs.load_state_dict(perturbed_state_dict(theirs))
    ours = TransformerWrapper(num_tokens=40, max_seq_len=16, attn_layers=Decoder(**BASE, unpad=True))
    ours.load_state_dict(theirs.state_dict())
    tokens, mask = torch.randint(0, 40, (3, 10)), masks(3, 10, seed=8)["pattern"]
    out, ran = attention_paths(lambda: ours(tokens, mask=mask))
    torch.testing.assert_close(out[mask], theirs(tokens, mask=mask)[mask], atol=1e-5, rtol=0)
    assert ran == "varlen"


def test_unpad_under_torch_compile_and_export():
    torch.manual_seed(0)
    ours, theirs = pair("encoder", dict(unpad=True), rotary_pos_emb=True)
    x, mask = torch.randn(2, 9, BASE["dim"]), masks(2, 9, seed=9)["pattern"]
    compiled = torch.compile(ours, backend="aot_eager")  # the packing runs eagerly, between graphs
    torch.testing.assert_close(compiled(x, mask=mask)[mask], theirs(x, mask=mask)[mask], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="export the stack without unpad"):
        torch.export.export(ours, (x,), dict(mask=mask))
