"""torch.export with dynamic batch and sequence, and torch.compile(dynamic=True) without recompiles.

The stacks and wrappers export as one xtc op each; its shapes are computed from symbolic sizes under fake tensors,
so an exported model runs at batch sizes and lengths other than the example's with the eager outputs (and
x-transformers' numbers), and torch.compile traces one graph for every length."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.export import Dim

from x_transformers_cpp import ContinuousTransformerWrapper, Encoder, TransformerWrapper
from xtc_testing import make_pair, random_mask

DIM = 32
KW = dict(dim=DIM, depth=2, heads=4, attn_dim_head=8)
# Common option sets, on the flash path and on the one that materialises the scores.
OPTIONS = {
    "plain": {},
    "rotary_gqa": dict(rotary_pos_emb=True, attn_kv_heads=2),
    "alibi": dict(alibi_pos_bias=True),
    "t5_bias": dict(rel_pos_bias=True),
    "rmsnorm_glu_qknorm": dict(use_rmsnorm=True, ff_glu=True, attn_qk_norm=True),
    "mem_kv_zero_kv": dict(attn_num_mem_kv=2, attn_add_zero_kv=True),
    "max_attend_past_softcap": dict(attn_max_attend_past=3, attn_softclamp_logits=True),
    "talking_heads_sink": dict(attn_pre_talking_heads=True, attn_head_learned_sink=True),
    "shift_tokens_residual_attn": dict(shift_tokens=1, residual_attn=True, add_value_residual=True),
}
# (batch, seq) the exported programs run at: the example's, then others (length 1 and 2 included).
SHAPES = [(3, 11), (5, 17), (2, 4), (1, 29), (4, 2), (2, 1)]


def _dims(auto):
    return (Dim.AUTO, Dim.AUTO) if auto else (Dim("batch"), Dim("seq"))


def _export(module, x, mask, auto):
    batch, seq = _dims(auto)
    shapes = {"x": {0: batch, 1: seq}}
    kwargs = {}
    if mask is not None:
        kwargs["mask"] = mask
        shapes["mask"] = {0: batch, 1: seq}
    return torch.export.export(module, (x,), kwargs, dynamic_shapes=shapes)


# Every option set with a mask and named Dims; without a mask and with Dim.AUTO for the first two.
STACK_CASES = [(kind, options, True, False) for kind in ("encoder", "decoder") for options in OPTIONS] + [
    (kind, options, with_mask, auto) for kind in ("encoder", "decoder") for options in ("plain", "rotary_gqa")
    for with_mask, auto in ((False, False), (True, True), (False, True))]


@pytest.mark.parametrize("kind,options,with_mask,auto", STACK_CASES,
                         ids=[f"{k}-{o}-{'mask' if m else 'no_mask'}-{'dim_auto' if a else 'named_dims'}"
                              for k, o, m, a in STACK_CASES])
def test_exported_stack_runs_at_other_shapes(kind, options, with_mask, auto):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, **OPTIONS[options])
    ours.eval(), theirs.eval()
    batch, seq = SHAPES[0]
    program = _export(ours, torch.randn(batch, seq, DIM), random_mask(batch, seq) if with_mask else None, auto)
    graph = str(program.graph)
    assert graph.count("xtc.attention_layers") == 1, graph
    exported = program.module()
    with torch.no_grad():
        for batch, seq in SHAPES:
            x = torch.randn(batch, seq, DIM)
            kwargs = {"mask": random_mask(batch, seq)} if with_mask else {}
            out = exported(x, **kwargs)
            torch.testing.assert_close(out, ours(x, **kwargs), atol=1e-6, rtol=0)
            torch.testing.assert_close(out, theirs(x, **kwargs), atol=1e-5, rtol=0)


# Research options (x-transformers' newer ideas), each where x-transformers runs it.
RESEARCH = {
    "lime": ("encoder", dict(integrate_layers=True)),
    "aggregated_residuals": ("decoder", dict(attn_aggregated_residuals=True,
                                             attn_aggregated_residual_kwargs=dict(lora_rank=8))),
    "derf_orthog_residual": ("encoder", dict(use_derf=True, orthog_residual=True)),
    "cope": ("decoder", dict(attn_use_cope=True)),
    "polar": ("encoder", dict(polar_pos_emb=True)),
    "data_dependent_alibi": ("decoder", dict(attn_data_dependent_alibi=True)),
    "rel_proj_pos_bias": ("encoder", dict(attn_use_rel_proj_pos_bias=True)),
    "latent_kv_rope": ("decoder", dict(attn_use_latent_kv=True, attn_dim_latent_kv=16, rotary_pos_emb=True,
                                       attn_latent_rope_subheads=1)),
    "gates_laser": ("encoder", dict(attn_gate_values=True, attn_output_gate=True, attn_laser=True)),
    "l2_distance": ("encoder", dict(attn_l2_distance=True)),
    "selective": ("decoder", dict(attn_selective=True)),
    "sigmoid_cog": ("decoder", dict(attn_sigmoid=True, attn_cog_signed=True)),
    "ff_softclamp": ("encoder", dict(ff_glu=True, ff_glu_softclamp=True, ff_glu_gate_softclamp_value=5.0)),
}


@pytest.mark.parametrize("kind,options", RESEARCH.values(), ids=RESEARCH.keys())
def test_exported_research_options_run_at_other_shapes(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, **options)
    ours.eval(), theirs.eval()
    program = _export(ours, torch.randn(3, 11, DIM), random_mask(3, 11), auto=False)
    exported = program.module()
    with torch.no_grad():
        for batch, seq in SHAPES[1:4]:
            x, mask = torch.randn(batch, seq, DIM), random_mask(batch, seq)
            out = exported(x, mask=mask)
            torch.testing.assert_close(out, ours(x, mask=mask), atol=1e-6, rtol=0)
            torch.testing.assert_close(out, theirs(x, mask=mask), atol=1e-5, rtol=0)


# Several residual streams export at the example's shape only: their stream mixing pins the symbolic sizes.
STATIC_RESEARCH = {
    "hyper_connections": ("decoder", dict(num_residual_streams=2)),
    "gated_multi_residual": ("encoder", dict(gated_multi_residual=True, residual_fn_kwargs=dict(read_gate_rank=4))),
}


@pytest.mark.parametrize("kind,options", STATIC_RESEARCH.values(), ids=STATIC_RESEARCH.keys())
def test_exported_residual_streams_run_at_the_example_shape(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, **options)
    ours.eval(), theirs.eval()
    x, mask = torch.randn(3, 11, DIM), random_mask(3, 11)
    program = torch.export.export(ours, (x,), dict(mask=mask))
    x, mask = torch.randn(3, 11, DIM), random_mask(3, 11, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x, mask=mask), theirs(x, mask=mask), atol=1e-5, rtol=0)


def test_exported_program_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(**KW, rotary_pos_emb=True).eval()
    program = _export(encoder, torch.randn(3, 11, DIM), random_mask(3, 11), auto=False)
    path = tmp_path / "encoder.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    x, mask = torch.randn(4, 19, DIM), random_mask(4, 19)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask=mask), encoder(x, mask=mask), atol=1e-6, rtol=0)


def test_exported_cross_attention_with_dynamic_context():
    torch.manual_seed(0)
    ours, theirs = make_pair("encoder", **KW, cross_attend=True)
    ours.eval(), theirs.eval()
    batch, seq, context_len = Dim("batch"), Dim("seq"), Dim("context_len")

    def inputs(b, n, c):
        return (torch.randn(b, n, DIM),), dict(mask=random_mask(b, n), context=torch.randn(b, c, DIM),
                                               context_mask=random_mask(b, c))

    args, kwargs = inputs(3, 11, 5)
    program = torch.export.export(ours, args, kwargs, dynamic_shapes={
        "x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}, "context": {0: batch, 1: context_len},
        "context_mask": {0: batch, 1: context_len}})
    exported = program.module()
    with torch.no_grad():
        for b, n, c in [(3, 11, 5), (2, 7, 13), (4, 20, 3)]:
            args, kwargs = inputs(b, n, c)
            torch.testing.assert_close(exported(*args, **kwargs), theirs(*args, **kwargs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("auto", [False, True], ids=["named_dims", "dim_auto"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no_mask"])
def test_exported_transformer_wrapper(with_mask, auto):
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=50, max_seq_len=40, attn_layers=Encoder(**KW, rotary_pos_emb=True)).eval()
    batch, seq = (Dim.AUTO, Dim.AUTO) if auto else (Dim("batch"), Dim("seq", max=40))  # positions up to max_seq_len
    shapes, kwargs = {"x": {0: batch, 1: seq}}, {}
    if with_mask:
        shapes["mask"], kwargs["mask"] = {0: batch, 1: seq}, random_mask(3, 11)
    program = torch.export.export(model, (torch.randint(0, 50, (3, 11)),), kwargs, dynamic_shapes=shapes)
    assert str(program.graph).count("xtc.transformer_wrapper") == 1
    exported = program.module()
    with torch.no_grad():
        for b, n in SHAPES[1:]:
            tokens = torch.randint(0, 50, (b, n))
            kw = {"mask": random_mask(b, n)} if with_mask else {}
            torch.testing.assert_close(exported(tokens, **kw), model(tokens, **kw), atol=1e-5, rtol=0)


@pytest.mark.parametrize("auto", [False, True], ids=["named_dims", "dim_auto"])
@pytest.mark.parametrize("padding", ["mask", "lens", "none"])
def test_exported_continuous_wrapper(padding, auto):
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(dim_in=12, dim_out=7, max_seq_len=40, num_memory_tokens=2,
                                         attn_layers=Encoder(**KW)).eval()
    batch, seq = (Dim.AUTO, Dim.AUTO) if auto else (Dim("batch"), Dim("seq", max=40))

    def kwargs_for(b, n):
        if padding == "mask":
            return {"mask": random_mask(b, n)}
        if padding == "lens":
            return {"lens": torch.randint(0, n + 1, (b,))}
        return {}

    shapes = {"x": {0: batch, 1: seq}}
    if padding == "mask":
        shapes["mask"] = {0: batch, 1: seq}
    elif padding == "lens":
        shapes["lens"] = {0: batch}
    program = torch.export.export(model, (torch.randn(3, 11, 12),), kwargs_for(3, 11), dynamic_shapes=shapes)
    exported = program.module()
    with torch.no_grad():
        for b, n in SHAPES[1:]:
            x, kw = torch.randn(b, n, 12), kwargs_for(b, n)
            torch.testing.assert_close(exported(x, **kw), model(x, **kw), atol=1e-5, rtol=0)


def test_exported_transformer_wrapper_checks_token_ids():
    """The eager op reads the ids; decomposed into aten ops (as AOTInductor compiles it), the check is a graph
    assertion."""
    model = TransformerWrapper(num_tokens=50, max_seq_len=40, attn_layers=Encoder(**KW)).eval()
    program = torch.export.export(model, (torch.randint(0, 50, (2, 9)),),
                                  dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq", max=40)}})
    bad = torch.full((3, 5), 50)
    with pytest.raises(ValueError, match=r"token ids in \[0, 50\), got ids from 50 to 50"):
        program.module()(bad)
    decomposed = program.run_decompositions()
    assert "xtc.transformer_wrapper" not in str(decomposed.graph)
    with pytest.raises(RuntimeError, match=r"token ids in \[0, 50\)"):
        decomposed.module()(bad)
    tokens = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(decomposed.module()(tokens), model(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", ["plain", "rotary_gqa", "alibi", "shift_tokens_residual_attn"])
def test_compile_dynamic_does_not_recompile_across_lengths(options):
    torch.manual_seed(0)
    torch._dynamo.reset()
    ours, theirs = make_pair("decoder", **KW, **OPTIONS[options])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ours, backend=counter, fullgraph=True, dynamic=True)
    # Sizes 0 and 1 are specialised by torch.compile itself (its 0/1 rule), so the shapes here are >= 2.
    for batch, seq in [(2, 5), (3, 9), (2, 17), (4, 33), (5, 2)]:
        x, mask = torch.randn(batch, seq, DIM, requires_grad=True), random_mask(batch, seq)
        out = compiled(x, mask=mask)
        torch.testing.assert_close(out, theirs(x, mask=mask), atol=1e-5, rtol=0)
        # training through the compiled graph: the gradient of the input matches eager
        grad = torch.randn_like(out)
        (got,) = torch.autograd.grad(out, x, grad)
        (want,) = torch.autograd.grad(ours(x, mask=mask), x, grad)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} frames for 5 shapes"


def test_aoti_package_loads_in_python_and_matches_eager(tmp_path):
    """AOTInductor compiles the exported encoder (the stack decomposed into aten ops and xtc::flash_attention, which
    the package calls through the dispatcher) into a .pt2 that runs at two shapes. The C++ load is the example
    app's ctest (examples/cpp/encoder_app.cpp)."""
    torch.manual_seed(0)
    ours, theirs = make_pair("encoder", **KW, rotary_pos_emb=True, attn_kv_heads=2)
    ours.eval(), theirs.eval()
    program = _export(ours, torch.randn(3, 11, DIM), random_mask(3, 11), auto=False)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "encoder.pt2"))
    package = torch._inductor.aoti_load_package(path)
    for batch, seq in [(3, 11), (5, 23)]:
        x, mask = torch.randn(batch, seq, DIM), random_mask(batch, seq)
        with torch.no_grad():
            torch.testing.assert_close(package(x, mask=mask), theirs(x, mask=mask), atol=1e-5, rtol=0)
