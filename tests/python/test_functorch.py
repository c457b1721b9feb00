"""torch.func over the stacks and the attention op: vmap (batched inputs, shared inputs, batched parameters as
model ensembles), grad and jacrev, against x-transformers under the same transforms and against plain loops.

Under a transform the stacks decompose into aten ops with functorch rules (the flash kernel's C++ autograd has
none, so attention takes the materialising path there); xtc::flash_attention itself has a vmap rule that folds the
vmapped dimension into the batch."""
import pytest
import torch
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

from x_transformers_cpp import ContinuousTransformerWrapper, Encoder
from xtc_testing import make_pair, random_mask

DIM = 16
KW = dict(dim=DIM, depth=2, heads=2, attn_dim_head=8)
OPTIONS = {"plain": {}, "rotary_gqa": dict(rotary_pos_emb=True, attn_kv_heads=1), "alibi": dict(alibi_pos_bias=True)}


def _masks(v, b, n):
    return torch.stack([random_mask(b, n) for _ in range(v)])


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_vmap_over_stack_matches_x_transformers_and_a_loop(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, **OPTIONS[options])
    ours.eval(), theirs.eval()
    x, mask = torch.randn(3, 2, 7, DIM), _masks(3, 2, 7)
    with torch.no_grad():
        out = vmap(lambda t, m: ours(t, mask=m))(x, mask)
        torch.testing.assert_close(out, vmap(lambda t, m: theirs(t, mask=m))(x, mask), atol=1e-5, rtol=0)
        loop = torch.stack([ours(x[i], mask=mask[i]) for i in range(3)])
        torch.testing.assert_close(out, loop, atol=1e-5, rtol=0)
        # a mask shared by every slice, and the vmapped dim in another place
        shared = vmap(lambda t: ours(t, mask=mask[0]), in_dims=1, out_dims=1)(x.transpose(0, 1))
        torch.testing.assert_close(shared.transpose(0, 1), torch.stack([ours(x[i], mask=mask[0]) for i in range(3)]),
                                   atol=1e-5, rtol=0)


def test_vmap_over_continuous_wrapper():
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(dim_in=5, dim_out=3, max_seq_len=16, attn_layers=Encoder(**KW)).eval()
    x, mask = torch.randn(4, 2, 6, 5), _masks(4, 2, 6)
    with torch.no_grad():
        out = vmap(lambda t, m: model(t, mask=m))(x, mask)
        torch.testing.assert_close(out, torch.stack([model(x[i], mask=mask[i]) for i in range(4)]), atol=1e-5, rtol=0)


def test_vmap_over_stacked_parameters_runs_an_ensemble():
    torch.manual_seed(0)
    members = [Encoder(**KW, rotary_pos_emb=True).eval() for _ in range(3)]
    params, buffers = stack_module_state(members)
    base = Encoder(**KW, rotary_pos_emb=True).eval().to("meta")
    x, mask = torch.randn(2, 7, DIM), random_mask(2, 7)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,), {"mask": mask}))(params, buffers)
    with torch.no_grad():
        torch.testing.assert_close(out, torch.stack([m(x, mask=mask) for m in members]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_grad_of_parameters_matches_x_transformers(kind):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, rotary_pos_emb=True)
    x, mask = torch.randn(3, 7, DIM), random_mask(3, 7)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(module):
        return lambda p: functional_call(module, p, (x,), {"mask": mask}).pow(2).sum()

    got, want = grad(loss(ours))(params), grad(loss(theirs))(params)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=0, msg=name)
    # and the same as ordinary autograd through the flash kernel
    ours.zero_grad()
    loss(ours)(dict(ours.named_parameters())).backward()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-4, rtol=0, msg=name)


def test_jacrev_of_input_matches_x_transformers():
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **KW, alibi_pos_bias=True)
    x, mask = torch.randn(2, 4, DIM), random_mask(2, 4)
    got = jacrev(lambda t: ours(t, mask=mask))(x)
    assert got.shape == (2, 4, DIM, 2, 4, DIM)
    torch.testing.assert_close(got, jacrev(lambda t: theirs(t, mask=mask))(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_vmap_over_flash_attention_op(causal):
    torch.manual_seed(0)
    v_, b, n, m, h, hk, d = 3, 2, 9, 11, 4, 2, 8
    q = torch.randn(v_, b, n, h, d)
    k, v = torch.randn(b, m, hk, d), torch.randn(v_, b, m, hk, d)  # k shared by every slice
    mask = torch.stack([random_mask(b, m) for _ in range(v_)])
    out, lse = vmap(lambda q_, v__, mk: torch.ops.xtc.flash_attention(q_, k, v__, mk, causal))(q, v, mask)
    for i in range(v_):
        ref_out, ref_lse = torch.ops.xtc.flash_attention(q[i], k, v[i], mask[i], causal)
        torch.testing.assert_close(out[i], ref_out, atol=1e-6, rtol=0)
        torch.testing.assert_close(lse[i], ref_lse, atol=1e-6, rtol=0)
    # per-slice ALiBi slopes take one call per slice
    slopes = torch.rand(v_, h)
    out = vmap(lambda q_, s: torch.ops.xtc.flash_attention(q_, k, k, None, causal, None, s)[0])(q, slopes)
    for i in range(v_):
        torch.testing.assert_close(out[i], torch.ops.xtc.flash_attention(q[i], k, k, None, causal, None, slopes[i])[0],
                                   atol=1e-6, rtol=0)
