"""Each supported x-transformers option, alone and combined, against the pinned x-transformers package: the same
state_dict keys in the same order, outputs within 1e-5 and gradients within 1e-4 (scaled by the tensor's size)."""
import pytest
import torch
from x_transformers import CrossAttender as XCrossAttender, Decoder as XDecoder, Encoder as XEncoder

from x_transformers_cpp import CrossAttender, Decoder, Encoder
from xtc_testing import same_weights

CLASSES = {"encoder": (Encoder, XEncoder), "decoder": (Decoder, XDecoder), "cross": (CrossAttender, XCrossAttender)}
BASE = dict(dim=32, depth=2, heads=4, attn_dim_head=16)

OPTIONS = [
    # layer schedules: a tuple gives one value per layer of its kind (depth 2: two of each)
    dict(ff_mult=(4, 2)), dict(ff_mult=(1.5, 3), ff_glu=(True, False)), dict(attn_kv_heads=(4, 2)),
    dict(attn_qk_norm=(True, False), ff_swish=(False, True)),
    dict(attn_num_mem_kv=(0, 2), attn_gate_values=(True, False)), dict(depth=3, ff_mult=(1, 2, 3), rotary_pos_emb=True),
    # norms
    dict(use_rmsnorm=True), dict(use_scalenorm=True), dict(use_simple_rmsnorm=True),
    dict(norm_add_unit_offset=False), dict(use_rmsnorm=True, norm_add_unit_offset=False),
    dict(use_dynamic_tanh=True), dict(use_dynamic_tanh=True, dynamic_tanh_init_alpha=0.5, norm_add_unit_offset=False),
    dict(use_dynamic_tanh=True, sandwich_norm=True, dynamic_tanh_init_alpha=2.0),
    dict(use_derf=True), dict(use_derf=True, norm_add_unit_offset=False), dict(use_derf=True, pre_norm=False),
    dict(use_derf=True, sandwich_norm=True),
    dict(pre_norm=False), dict(sandwich_norm=True), dict(pre_norm_has_final_norm=False),
    dict(pre_and_post_norm=True), dict(pre_and_post_norm=True, pre_norm=False, use_rmsnorm=True),
    dict(pre_and_post_norm=True, sandwich_norm=True),
    # U-Net skips (odd depth: the middle block has no partner)
    dict(unet_skips=True), dict(unet_skips=True, depth=5), dict(unet_skips=True, depth=4, rotary_pos_emb=True),
    # input reinjection
    dict(reinject_input=True), dict(reinject_input=True, learned_reinject_input_gate=True),
    dict(reinject_input=True, learned_reinject_input_gate=True, rotary_pos_emb=True, pre_norm=False),
    # residuals
    dict(scale_residual=True), dict(scale_residual_constant=0.5), dict(gate_residual=True),
    dict(gate_residual=True, scale_residual=True), dict(use_layerscale=True),
    dict(use_layerscale=True, layerscale_init_value=0.1), dict(use_layerscale=True, norm_add_unit_offset=False),
    # layouts
    dict(macaron=True), dict(macaron=True, use_layerscale=True), dict(custom_layers=("a", "a", "f", "a", "f")),
    dict(sandwich_coef=1, depth=3), dict(par_ratio=2, depth=4), dict(layers_execute_order=(0, 1, 0, 1, 2, 3)),
    dict(weight_tie_layers=True, depth=3), dict(softclamp_output=True, softclamp_output_value=2.0),
    dict(zero_init_branch_output=True),
    dict(only_attn=True), dict(only_attn=True, macaron=True), dict(only_attn=True, weight_tie_layers=True, depth=3),
    dict(only_attn=True, sandwich_coef=1, depth=3), dict(only_attn=True, par_ratio=2, depth=4),
    dict(only_attn=True, custom_layers=("a", "a")),
    # positions
    dict(alibi_pos_bias=True), dict(alibi_pos_bias=True, alibi_num_heads=2), dict(alibi_pos_bias=True, heads=6),
    dict(rotary_pos_emb=True), dict(rotary_pos_emb=True, rotary_emb_dim=16), dict(rotary_pos_emb=True, rotary_emb_dim=4),
    dict(rotary_pos_emb=True, rotary_interpolation_factor=2.0, rotary_base_rescale_factor=2.0),
    dict(rotary_pos_emb=True, attn_qk_norm=True, attn_num_mem_kv=2, attn_kv_heads=2),
    dict(rel_pos_bias=True), dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=16),
    dict(rel_pos_bias=True, attn_num_mem_kv=2), dict(dynamic_pos_bias=True),
    dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True, dynamic_pos_bias_mlp_depth=3),
    dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True), dict(dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth=1),
    # feed-forward
    dict(ff_mult=2), dict(ff_glu=True), dict(ff_glu=True, ff_glu_mult_bias=True), dict(ff_swish=True),
    dict(ff_glu=True, ff_swish=True), dict(ff_relu_squared=True),
    dict(ff_relu_squared=True, ff_swish=True),  # x-transformers accepts both: relu_squared wins (a randomized find)
    dict(ff_post_act_ln=True), dict(ff_no_bias=True),
    # attention
    dict(attn_kv_heads=2), dict(attn_one_kv_head=True), dict(attn_value_dim_head=8),
    dict(attn_softclamp_logits=True, attn_logit_softclamp_value=3.0), dict(attn_max_attend_past=3),
    dict(attn_qk_norm=True), dict(attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_scale=5),
    dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True), dict(attn_gate_values=True), dict(attn_head_scale=True),
    dict(attn_num_mem_kv=3), dict(attn_num_mem_kv=2, alibi_pos_bias=True), dict(attn_num_mem_kv=2, attn_max_attend_past=2),
    dict(attn_num_mem_kv=2, attn_qk_norm=True, attn_qk_norm_dim_scale=True), dict(attn_flash=True),
    dict(add_value_residual=True), dict(add_value_residual=True, learned_value_residual_mix=False, attn_kv_heads=2),
    dict(add_value_residual=True, attn_num_mem_kv=2, attn_on_attn=True, depth=3),
    dict(shift_tokens=1), dict(shift_tokens=2, dim=30), dict(shift_tokens=1, macaron=True, use_layerscale=True),
    dict(residual_attn=True), dict(residual_attn=True, attn_sparse_topk=4, alibi_pos_bias=True),
    dict(residual_attn=True, attn_num_mem_kv=2, rel_pos_bias=True, layer_dropout=0.0),
    dict(attn_pre_talking_heads=True), dict(attn_post_talking_heads=True), dict(attn_pre_scale_post_talking_heads=True),
    dict(attn_pre_talking_heads=True, attn_post_talking_heads=True, attn_kv_heads=2),
    dict(attn_sparse_topk=3), dict(attn_sparse_topk=3, attn_sparse_topk_straight_through=True),
    dict(attn_on_attn=True), dict(attn_on_attn=True, heads=1, attn_dim_head=8), dict(attn_on_attn=True, attn_gate_values=True),
    dict(attn_sparse_topk=4, attn_pre_talking_heads=True, alibi_pos_bias=True, attn_num_mem_kv=2),
    dict(attn_qk_rmsnorm=True), dict(attn_k_rmsnorm=True, attn_kv_heads=2), dict(attn_value_rmsnorm=True),
    dict(attn_qk_rmsnorm=True, attn_value_rmsnorm=True, add_value_residual=True, rotary_pos_emb=True),
    dict(attn_add_zero_kv=True), dict(attn_add_zero_kv=True, alibi_pos_bias=True),
    dict(attn_add_zero_kv=True, attn_num_mem_kv=2, attn_max_attend_past=2),
    dict(attn_add_zero_kv=True, rel_pos_bias=True, attn_kv_heads=2),
    dict(attn_head_learned_sink=True), dict(attn_head_learned_sink=True, alibi_pos_bias=True, attn_num_mem_kv=2),
    dict(attn_head_learned_sink=True, attn_sparse_topk=3, attn_pre_talking_heads=True, attn_kv_heads=2),
    # combinations
    dict(use_rmsnorm=True, ff_glu=True, ff_swish=True, attn_kv_heads=2, alibi_pos_bias=True, attn_head_scale=True),
    dict(pre_norm=False, gate_residual=True, macaron=True, attn_gate_values=True, ff_post_act_ln=True),
    dict(sandwich_norm=True, use_layerscale=True, scale_residual=True, attn_softclamp_logits=True,
         softclamp_output=True, use_scalenorm=True),
]


def option_id(kwargs):
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def make_pair(kind, **kwargs):
    ours_cls, theirs_cls = CLASSES[kind]
    return same_weights(lambda: ours_cls(**kwargs), lambda: theirs_cls(**kwargs))


def scaled_close(actual, expected, tol, name):
    torch.testing.assert_close(actual, expected, atol=tol * max(1.0, expected.abs().max().item()), rtol=0,
                               msg=lambda m: f"{name}: {m}")


def check(ours, theirs, x, mask=None, context=None, context_mask=None, **forward_kwargs):
    """Outputs within 1e-5 and the gradients of x and every parameter within 1e-4 (scaled by size)."""
    kwargs = dict(mask=mask, **forward_kwargs)
    if context is not None:
        kwargs.update(context=context, context_mask=context_mask)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x1, **kwargs), theirs(x2, **kwargs)
    scaled_close(out, expected, 1e-5, "output")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x1, *ours.parameters()], grad)
    want = torch.autograd.grad(expected, [x2, *theirs.parameters()], grad, allow_unused=True)
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, g, w in zip(names, got, want):
        scaled_close(g, torch.zeros_like(g) if w is None else w, 1e-4, f"grad {name}")


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_option_matches_x_transformers(kind, options):
    torch.manual_seed(0)
    kwargs = {**BASE, **options}
    ours, theirs = make_pair(kind, **kwargs)
    x = torch.randn(3, 11, kwargs["dim"])
    mask = torch.rand(3, 11) > 0.3
    mask[0] = True
    mask[:, 0] = True  # causal rows keep one visible key, where the two libraries agree on semantics
    check(ours, theirs, x)
    check(ours, theirs, x, mask)


CROSS_OPTIONS = [dict(), dict(cross_attn_kv_heads=2), dict(attn_gate_values=True), dict(cross_attn_dim_head=8),
                 dict(attn_num_mem_kv=2), dict(use_rmsnorm=True, ff_glu=True), dict(cross_attn_softclamp_logits=True),
                 dict(rotary_pos_emb=True), dict(cross_residual_attn=True),
                 dict(residual_attn=True, cross_residual_attn=True), dict(shift_tokens=1),
                 dict(add_value_residual=True), dict(cross_attn_add_zero_kv=True, cross_attn_k_rmsnorm=True),
                 dict(cross_attn_head_learned_sink=True), dict(cross_attn_dim_context=48),
                 dict(cross_attn_dim_context=20, cross_attn_kv_heads=2, attn_gate_values=True, rotary_pos_emb=True),
                 # layer schedules: self-attention's attn_* tuples stay with self-attention, as x-transformers
                 dict(cross_attn_kv_heads=(1, 2)), dict(attn_kv_heads=(4, 2), cross_attn_dim_head=(8, 16)),
                 dict(ff_mult=(2, 3), cross_attn_gate_values=(False, True))]


@pytest.mark.parametrize("options", CROSS_OPTIONS, ids=option_id)
@pytest.mark.parametrize("kind", ["cross", "encoder", "decoder"])
def test_cross_attention_matches_x_transformers(kind, options):
    torch.manual_seed(1)
    kwargs = {**BASE, **options}
    if kind != "cross":
        kwargs["cross_attend"] = True
    ours, theirs = make_pair(kind, **kwargs)
    x, context = torch.randn(2, 7, 32), torch.randn(2, 13, kwargs.get("cross_attn_dim_context", 32))
    mask, context_mask = torch.rand(2, 7) > 0.3, torch.rand(2, 13) > 0.3
    mask[:, 0] = True
    context_mask[1] = False  # a sequence whose context is all padding
    check(ours, theirs, x, mask, context, context_mask)
    check(ours, theirs, x, None, context, None)


def test_cross_attend_needs_context():
    model = Encoder(dim=32, depth=1, heads=2, cross_attend=True)
    with pytest.raises(ValueError, match="context must be passed in"):
        model(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="context was passed in"):
        Encoder(dim=32, depth=1, heads=2)(torch.randn(1, 3, 32), context=torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match=r"expected context of shape \(1, seq, 32\)"):
        model(torch.randn(1, 3, 32), context=torch.randn(1, 2, 16))
    wide = CrossAttender(dim=32, depth=1, heads=2, cross_attn_dim_context=48)
    with pytest.raises(ValueError, match=r"expected context of shape \(1, seq, 48\)"):
        wide(torch.randn(1, 3, 32), context=torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match="attn_dim_context=48"):
        Encoder(dim=32, depth=1, heads=2, attn_dim_context=48)


@pytest.mark.parametrize("kwargs,message", [
    (dict(use_rmsnorm=True, use_scalenorm=True), "clash"),
    (dict(pre_norm=False, sandwich_norm=True), "sandwich_norm needs pre_norm"),
    (dict(attn_kv_heads=3), "kv_heads to divide heads"),
    (dict(custom_layers=("a", "x")), "custom_layers"),
    (dict(layers_execute_order=(0, 9)), "layers_execute_order"),
    (dict(weight_tie_layers=True, custom_layers=("a", "f")), "weight_tie_layers"),
    (dict(attn_qk_norm=True, attn_qk_norm_groups=32), "qk_norm_groups"),
    (dict(ff_mult=(4, 2, 1)), r"expected ff.mult per layer as 2 values"),
    (dict(attn_kv_heads=(4, 3)), "kv_heads to divide heads"),
])
def test_clashing_or_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**{**BASE, **kwargs})


def test_layer_dropout_skips_layers_only_in_training():
    torch.manual_seed(2)
    model = Encoder(**BASE, layer_dropout=0.5)
    x = torch.randn(2, 5, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    outs = {tuple(model(x).flatten()[:4].tolist()) for _ in range(8)}
    assert len(outs) > 1


@pytest.mark.parametrize("shape", ["ij", "hij", "bhij", "1hij", "b1ij"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_attn_mask_matches_x_transformers(kind, shape):
    torch.manual_seed(3)
    ours, theirs = make_pair(kind, **BASE, rotary_pos_emb=True)
    b, n, h = 3, 9, BASE["heads"]
    sizes = {"ij": (n, n), "hij": (h, n, n), "bhij": (b, h, n, n), "1hij": (1, h, n, n), "b1ij": (b, 1, n, n)}[shape]
    attn_mask = torch.rand(sizes) > 0.4
    attn_mask[..., 0] = True  # every query keeps a key in both libraries' sense
    x = torch.randn(b, n, 32)
    mask = torch.rand(b, n) > 0.2
    mask[:, 0] = True
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ours(x1, mask=mask, attn_mask=attn_mask)
    expected = theirs(x2, mask=mask, attn_mask=attn_mask)
    scaled_close(out, expected, 1e-5, "output")
    grad = torch.randn_like(out)
    for name, g, w in zip(["x"] + [k for k, _ in ours.named_parameters()],
                          torch.autograd.grad(out, [x1, *ours.parameters()], grad),
                          torch.autograd.grad(expected, [x2, *theirs.parameters()], grad)):
        scaled_close(g, w, 1e-4, f"grad {name}")


def test_bad_attn_mask_raises():
    model = Encoder(**BASE)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="attn_mask of dtype bool"):
        model(x, attn_mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"expected attn_mask of shape \(5, 5\)"):
        model(x, attn_mask=torch.ones(4, 5, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("window", [0, 2, 5])
def test_window_size_equals_a_band_attn_mask(kind, window):
    """attn_window_size (our extension, in the kernel) against x-transformers given the same band as attn_mask."""
    torch.manual_seed(4)
    ours, theirs = make_pair(kind, **BASE)
    windowed = CLASSES[kind][0](**BASE, attn_window_size=window)
    windowed.load_state_dict(theirs.state_dict())
    n = 11
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    band = distance.abs() <= window
    x = torch.randn(2, n, 32)
    mask = torch.rand(2, n) > 0.2
    mask[:, 0] = True
    band_and_self = band | torch.eye(n, dtype=torch.bool)  # both agree on rows the band leaves empty of kept keys
    expected = theirs(x, mask=mask, attn_mask=band_and_self)
    scaled_close(windowed(x, mask=mask), expected, 1e-5, "windowed output")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_seq_start_pos_and_self_attn_kv_mask_match_x_transformers(kind, with_mask):
    torch.manual_seed(5)
    ours, theirs = make_pair(kind, **BASE, rotary_pos_emb=True)
    b, n = 3, 10
    x = torch.randn(b, n, 32)
    start = torch.tensor([0, 3, 7])
    mask = torch.arange(n)[None, :] >= start[:, None] if with_mask else None  # left padding
    out = ours(x, mask=mask, seq_start_pos=start)
    expected = theirs(x, mask=mask, seq_start_pos=start)
    kept = torch.arange(n)[None, :] >= start[:, None]
    scaled_close(out[kept], expected[kept], 1e-5, "seq_start_pos output")
    kv_mask = torch.rand(b, n) > 0.3
    kv_mask[:, -1] = True
    out = ours(x, mask=mask, self_attn_kv_mask=kv_mask)
    expected = theirs(x, mask=mask, self_attn_kv_mask=kv_mask)
    # A causal query whose own and earlier keys are all masked sees no key: we give it 0 attention, where
    # x-transformers averages over every key, future ones included (README, "Differences"). Elsewhere: equal.
    sees_a_key = kv_mask.cumsum(1) > 0 if kind == "decoder" else kv_mask.any(1, keepdim=True).expand(b, n)
    scaled_close(out[sees_a_key], expected[sees_a_key], 1e-5, "self_attn_kv_mask output")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("options", [dict(), dict(macaron=True, pre_norm=False), dict(layers_execute_order=(0, 1, 0, 1))],
                         ids=option_id)
def test_return_hiddens_match_x_transformers(kind, options):
    torch.manual_seed(6)
    ours, theirs = make_pair(kind, **BASE, **options)
    x = torch.randn(2, 7, 32)
    mask = torch.rand(2, 7) > 0.2
    mask[:, 0] = True
    out, inter = ours(x, mask=mask, return_hiddens=True)
    expected, their_inter = theirs(x, mask=mask, return_hiddens=True)
    scaled_close(out, expected, 1e-5, "output")
    scaled_close(inter.last_hidden, their_inter.last_hidden, 1e-5, "last_hidden")
    for name in ("hiddens", "layer_hiddens"):
        ours_list, theirs_list = getattr(inter, name), getattr(their_inter, name)
        assert len(ours_list) == len(theirs_list), name
        for a, b in zip(ours_list, theirs_list):
            scaled_close(a, b, 1e-5, name)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("shape", ["hij", "1hij", "bhij"])
def test_attn_bias_matches_x_transformers(kind, shape):
    torch.manual_seed(7)
    ours, theirs = make_pair(kind, **BASE)
    b, n, h = 2, 9, BASE["heads"]
    sizes = {"hij": (h, n, n), "1hij": (1, h, n, n), "bhij": (b, h, n, n)}[shape]
    bias = torch.randn(sizes)
    x = torch.randn(b, n, 32)
    mask = torch.rand(b, n) > 0.2
    mask[:, 0] = True
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x1, mask=mask, attn_bias=bias), theirs(x2, mask=mask, attn_bias=bias)
    scaled_close(out, expected, 1e-5, "output")
    grad = torch.randn_like(out)
    scaled_close(torch.autograd.grad(out, x1, grad)[0], torch.autograd.grad(expected, x2, grad)[0], 1e-4, "grad x")


def test_attn_bias_clashes_with_position_bias_modules():
    model = Encoder(**BASE, alibi_pos_bias=True)
    with pytest.raises(ValueError, match="attn_bias clashes"):
        model(torch.randn(1, 3, 32), attn_bias=torch.zeros(BASE["heads"], 3, 3))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("options", [dict(), dict(rotary_pos_emb=True), dict(alibi_pos_bias=True),
                                     dict(attn_num_mem_kv=2, attn_kv_heads=2)], ids=option_id)
@pytest.mark.parametrize("masked", [False, True])
def test_mems_match_x_transformers(kind, options, masked):
    torch.manual_seed(8)
    ours, theirs = make_pair(kind, **BASE, **options)
    b, n, mem_len = 2, 7, 5
    x = torch.randn(b, n, 32)
    mems = [torch.randn(b, mem_len, 32) for _ in range(BASE["depth"] - 1)]  # fewer than layers: the last gets none
    mask = mem_masks = None
    if masked:
        mask = torch.rand(b, n) > 0.3
        mask[:, 0] = True
        mem_masks = [torch.rand(b, mem_len) > 0.3 for _ in mems]
    out = ours(x, mask=mask, mems=mems, mem_masks=mem_masks)
    expected = theirs(x, mask=mask, mems=mems, mem_masks=mem_masks)
    scaled_close(out, expected, 1e-5, "output with mems")


def test_bad_mems_raise():
    model = Encoder(**BASE)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match=r"expected mems\[0\] of shape \(2, mem_len, 32\)"):
        model(x, mems=[torch.randn(2, 3, 16)])
    with pytest.raises(ValueError, match="with rel_pos_bias or dynamic_pos_bias, expected one mem per"):
        Encoder(**BASE, rel_pos_bias=True)(x, mems=[torch.randn(2, 3, 32)] * (BASE["depth"] - 1))
    with pytest.raises(ValueError, match="mems are not supported with attn_mask"):
        model(x, mems=[torch.randn(2, 3, 32)], attn_mask=torch.ones(5, 5, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("options", [dict(rel_pos_bias=True), dict(dynamic_pos_bias=True)], ids=option_id)
def test_mems_with_a_learned_position_bias_match_x_transformers(kind, options):
    # Transformer-XL's own setting: the (query, key) bias spans the memory keys in front.
    torch.manual_seed(9)
    ours, theirs = make_pair(kind, **BASE, **options)
    x = torch.randn(2, 7, 32)
    mems = [torch.randn(2, 5, 32) for _ in range(BASE["depth"])]
    scaled_close(ours(x, mems=mems), theirs(x, mems=mems), 1e-5, "output with mems")


def test_rmsnorm_and_zero_kv_option_errors():
    with pytest.raises(ValueError, match="qk_rmsnorm and attn_k_rmsnorm clash"):
        Decoder(**BASE, attn_qk_rmsnorm=True, attn_k_rmsnorm=True)
    with pytest.raises(ValueError, match="value_rmsnorm needs as many kv heads"):
        Decoder(**BASE, attn_value_rmsnorm=True, attn_kv_heads=2)
    with pytest.raises(ValueError, match="window_size clashes"):
        Encoder(**BASE, attn_window_size=4, attn_add_zero_kv=True)
    with pytest.raises(ValueError, match="head_learned_sink is not supported with attn_flash"):
        Encoder(**BASE, attn_head_learned_sink=True, attn_flash=True)
    with pytest.raises(ValueError, match="head_learned_sink clashes with residual attention"):
        Encoder(**BASE, attn_head_learned_sink=True, residual_attn=True)
    with pytest.raises(ValueError, match="use_dynamic_tanh, use_derf"):
        Encoder(**BASE, use_derf=True, use_rmsnorm=True)
    with pytest.raises(ValueError, match="only_attn clashes with layers_execute_order and unet_skips"):
        Encoder(**BASE, only_attn=True, unet_skips=True)
    with pytest.raises(ValueError, match="only_attn clashes with feed-forward layers"):
        Encoder(**BASE, only_attn=True, custom_layers=("a", "f"))
    with pytest.raises(ValueError, match="use_dynamic_tanh needs pre_norm"):
        Encoder(**BASE, use_dynamic_tanh=True, pre_norm=False)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("layout", [dict(custom_layers=("a", "f", "a", "f", "f")),
                                    dict(custom_layers=("a", "f"), layers_execute_order=(0, 1, 0, 1))])
def test_depth_comes_from_custom_layers(kind, layout):
    """Without depth, x-transformers takes it from the executed layers; so do we, with its numbers."""
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, dim=32, heads=4, attn_dim_head=16, **layout)
    assert ours.depth == theirs.depth
    check(ours, theirs, torch.randn(2, 9, 32), mask=torch.rand(2, 9) > 0.2)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_value_residual_with_fewer_kv_heads_runs_where_x_transformers_does(kind):
    """A randomized find: add_value_residual with kv heads < heads was refused even with one self-attention layer,
    where x-transformers has no learned mix and runs. With two such layers x-transformers fails at forward (its mix
    is per query head), so we refuse at construction."""
    torch.manual_seed(0)
    kwargs = dict(dim=32, depth=1, heads=4, attn_dim_head=8, attn_kv_heads=2, add_value_residual=True)
    ours, theirs = make_pair(kind, **kwargs)
    x, mask = torch.randn(2, 7, 32), torch.rand(2, 7) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(ours(x, mask=mask), theirs(x, mask=mask), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="add_value_residual's learned mix needs one kv head per query head"):
        Encoder(**{**kwargs, "depth": 2})



@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_shift_tokens_per_layer_match_x_transformers(kind):
    # x-transformers' layer schedule: one shift per layer (attention and feed-forward alternating).
    torch.manual_seed(10)
    schedule = (2, 1, 0, 1)
    ours, theirs = make_pair(kind, **BASE, shift_tokens=schedule)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x, mask = torch.randn(2, 9, 32), torch.rand(2, 9) > 0.3
    out, expected = ours(x, mask=mask), theirs(x, mask=mask)
    scaled_close(out, expected, 1e-5, "output with a shift schedule")
    with pytest.raises(ValueError, match="one value or one per layer"):
        Encoder(**BASE, shift_tokens=(1, 0, 1))


def test_unet_skips_refuses_layouts_x_transformers_cannot_pair():
    # Three-layer blocks leave second-half blocks without a partner: x-transformers fails with an IndexError.
    with pytest.raises(ValueError, match="unet_skips pairs more second-half blocks"):
        Encoder(**dict(BASE, depth=4), macaron=True, unet_skips=True)
    with pytest.raises(ValueError, match="unet_skips needs a depth of at least 2"):
        Encoder(**dict(BASE, depth=1), unet_skips=True)


CONDITIONING = [
    dict(use_adaptive_layernorm=True), dict(use_adaptive_rmsnorm=True),
    dict(use_adaptive_layernorm=True, use_adaptive_layerscale=True),  # DiT's adaLN-zero
    dict(use_adaptive_rmsnorm=True, dim_condition=12, adaptive_condition_mlp=True),
    dict(use_adaptive_layerscale=True, dim_condition=12, adaptive_condition_mlp=True,
         adaptive_condition_mlp_expansion=2, rotary_pos_emb=True),
]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("options", CONDITIONING, ids=option_id)
@pytest.mark.parametrize("per_token", [False, True])
def test_conditioning_matches_x_transformers(kind, options, per_token):
    # Diffusion / flow models over embeddings: the adaptive norms and layerscale read a condition (a time step,
    # a class embedding), per sequence or per token.
    torch.manual_seed(11)
    ours, theirs = make_pair(kind, **BASE, **options)
    width = options.get("dim_condition", BASE["dim"])
    x, mask = torch.randn(2, 9, 32), torch.rand(2, 9) > 0.3
    mask[:, 0] = True
    condition = torch.randn(2, 9, width) if per_token else torch.randn(2, width)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    c1, c2 = condition.clone().requires_grad_(), condition.clone().requires_grad_()
    out, expected = ours(x1, mask=mask, condition=c1), theirs(x2, mask=mask, condition=c2)
    scaled_close(out, expected, 1e-5, "output with a condition")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x1, c1, *ours.parameters()], grad)
    want = torch.autograd.grad(expected, [x2, c2, *theirs.parameters()], grad)
    for g, w in zip(got, want):
        scaled_close(g, w, 1e-4, "gradient with a condition")
    with pytest.raises(ValueError, match="condition must be passed in"):
        ours(x)
    with pytest.raises(ValueError, match="expected condition of shape"):
        ours(x, condition=torch.randn(2, width + 1))


def test_conditioning_with_unpad_and_through_the_wrapper():
    from x_transformers import ContinuousTransformerWrapper as XContinuous
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import ContinuousTransformerWrapper
    torch.manual_seed(12)
    layers = dict(BASE, use_adaptive_layernorm=True, use_adaptive_layerscale=True)
    theirs = XContinuous(dim_in=7, dim_out=7, max_seq_len=16, attn_layers=XEncoder(**layers))
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = ContinuousTransformerWrapper(dim_in=7, dim_out=7, max_seq_len=16, attn_layers=Encoder(**layers, unpad=True))
    ours.load_state_dict(theirs.state_dict())
    x, lens, condition = torch.randn(3, 10, 7), torch.tensor([10, 4, 7]), torch.randn(3, 32)
    keep = torch.arange(10) < lens[:, None]
    torch.testing.assert_close(ours(x, lens=lens, condition=condition)[keep],
                               theirs(x, lens=lens, condition=condition)[keep], atol=1e-5, rtol=0)
