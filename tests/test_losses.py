"""Tests for okd.losses: exact divergences against an independent float64 reference, identities,
numerics, gradients, and the chunked path against the unchunked one."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from okd.losses import (
    DIVERGENCES,
    KDClosedForm,
    chunked_kd_loss,
    chunked_pair_loss,
    reduce_tokens,
    token_ce,
    token_divergence,
)

torch.set_num_threads(1)  # tiny tensors; the machine is shared


# -----------------------------------------------------------------------------
# independent reference: float64 numpy, explicit sums over probabilities

def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
    return terms.sum(-1)


def reference(kind, zs, zt, temperature=1.0, beta=0.5, alpha=0.1):
    q = np_softmax(np.asarray(zs, dtype=np.float64) / temperature)
    p = np_softmax(np.asarray(zt, dtype=np.float64) / temperature)
    if kind == "fkl":
        return np_kl(p, q)
    if kind == "rkl":
        return np_kl(q, p)
    if kind == "jsd":
        if beta == 0:
            return np_kl(p, q)
        if beta == 1:
            return np_kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if kind == "skl":
        return np_kl(p, alpha * p + (1 - alpha) * q)
    if kind == "srkl":
        return np_kl(q, (1 - alpha) * p + alpha * q)
    raise AssertionError(kind)


def logits(*shape, scale=3.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_rel_close(actual, expected, rel=1e-5):
    """max |a − e| ≤ rel · max |e| (plus a floor for all-zero tensors)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    bound = rel * max(expected.abs().max().item() if expected.numel() else 0.0, 1e-6)
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


# -----------------------------------------------------------------------------
# exact divergences

@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_float64_reference(kind, temperature):
    zs, zt = logits(2, 3, 50, seed=1), logits(2, 3, 50, seed=2)
    out = token_divergence(kind, zs, zt, temperature=temperature, beta=0.3, alpha=0.2)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    ref = reference(kind, zs.numpy(), zt.numpy(), temperature, beta=0.3, alpha=0.2)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_when_equal_and_nonnegative(kind):
    z = logits(4, 30, seed=3)
    assert token_divergence(kind, z, z.clone()).abs().max() < 1e-6
    out = token_divergence(kind, logits(4, 30, seed=4), z)
    assert (out > 0).all()


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_jsd_swap_symmetry(beta):
    a, b = logits(3, 40, seed=5), logits(3, 40, seed=6)
    torch.testing.assert_close(
        token_divergence("jsd", a, b, beta=beta), token_divergence("jsd", b, a, beta=1 - beta),
        rtol=1e-5, atol=1e-6,
    )


def test_endpoints_are_exact():
    zs, zt = logits(3, 40, seed=7), logits(3, 40, seed=8)
    fkl, rkl = token_divergence("fkl", zs, zt), token_divergence("rkl", zs, zt)
    assert torch.equal(token_divergence("jsd", zs, zt, beta=0.0), fkl)
    assert torch.equal(token_divergence("jsd", zs, zt, beta=1.0), rkl)
    assert torch.equal(token_divergence("skl", zs, zt, alpha=0.0), fkl)
    assert torch.equal(token_divergence("srkl", zs, zt, alpha=0.0), rkl)
    # α = 1 mixes the distribution with itself: zero
    assert token_divergence("skl", zs, zt, alpha=1.0).abs().max() == 0
    assert token_divergence("srkl", zs, zt, alpha=1.0).abs().max() == 0


def test_tvd_bounded():
    # nearly disjoint distributions: tvd close to, never above, 1
    zs, zt = logits(5, 20, scale=50.0, seed=9), logits(5, 20, scale=50.0, seed=10)
    out = token_divergence("tvd", zs, zt)
    assert (out <= 1.0).all() and (out >= 0).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_temperature_scaling(kind):
    zs, zt = logits(3, 25, seed=11), logits(3, 25, seed=12)
    torch.testing.assert_close(
        token_divergence(kind, zs, zt, temperature=2.5), token_divergence(kind, zs / 2.5, zt / 2.5),
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_finite_for_huge_logits(kind):
    zs = logits(4, 30, scale=1.0, seed=13).sign().mul(1e4).requires_grad_()
    zt = (logits(4, 30, scale=1.0, seed=14) * 1e4).requires_grad_()
    out = token_divergence(kind, zs, zt)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(zs.grad).all() and torch.isfinite(zt.grad).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_masked_vocab_slice(kind):
    # −inf logits on a shared vocab slice: exact zeros in p and q; result equals the divergence
    # over the unmasked part, and gradients stay finite (zero on the masked slice)
    zs, zt = logits(3, 20, seed=15), logits(3, 20, seed=16)
    zs_m = torch.cat([zs, torch.full((3, 5), -float("inf"))], -1).requires_grad_()
    zt_m = torch.cat([zt, torch.full((3, 5), -float("inf"))], -1).requires_grad_()
    out = token_divergence(kind, zs_m, zt_m, beta=0.4, alpha=0.3)
    np.testing.assert_allclose(out.detach().numpy(), reference(kind, zs, zt, beta=0.4, alpha=0.3),
                               rtol=1e-5, atol=1e-6)
    out.sum().backward()
    for g in (zs_m.grad, zt_m.grad):
        assert torch.isfinite(g).all() and (g[:, 20:] == 0).all()


@pytest.mark.parametrize("kind", ["jsd", "tvd", "skl", "srkl"])
def test_disjoint_zeros_stay_finite(kind):
    # different exact zeros in p and q: these divergences are bounded there
    zs, zt = logits(3, 20, seed=17), logits(3, 20, seed=18)
    zs[:, :4] = -float("inf")
    zt[:, 4:8] = -float("inf")
    out = token_divergence(kind, zs, zt)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), reference(kind, zs, zt), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_bf16_upcast(kind):
    zs, zt = logits(2, 4, 64, seed=19, dtype=torch.bfloat16), logits(2, 4, 64, seed=20, dtype=torch.bfloat16)
    out = token_divergence(kind, zs, zt)
    assert out.dtype == torch.float32
    # same as the float32 computation on the same (bf16-representable) values
    torch.testing.assert_close(out, token_divergence(kind, zs.float(), zt.float()), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), reference(kind, zs.float(), zt.float()), rtol=1e-5, atol=1e-6)


def test_argument_errors():
    z = logits(2, 5)
    with pytest.raises(ValueError, match="fkl, rkl, jsd, tvd, skl, srkl"):
        token_divergence("kl", z, z)
    with pytest.raises(ValueError, match="shape"):
        token_divergence("fkl", z, logits(2, 6))
    with pytest.raises(ValueError, match="beta"):
        token_divergence("jsd", z, z, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        token_divergence("fkl", z, z, temperature=0.0)
    with pytest.raises(ValueError, match="valid kinds"):
        chunked_kd_loss("bogus", z, z, z)


def test_token_ce():
    z = logits(2, 3, 10, seed=21)
    labels = torch.tensor([[1, -100, 9], [0, 4, -100]])
    out = token_ce(z, labels)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    q = np_softmax(z.numpy())
    for b in range(2):
        for t in range(3):
            y = labels[b, t].item()
            expected = 0.0 if y == -100 else -np.log(q[b, t, y])
            assert abs(out[b, t].item() - expected) < 1e-5
    assert token_ce(z.bfloat16(), labels).dtype == torch.float32


# -----------------------------------------------------------------------------
# reduce_tokens

def test_reduce_tokens():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert reduce_tokens(values, mask).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert reduce_tokens(values, mask, "sequence").item() == pytest.approx((1.5 + 5.0) / 2)
    empty = torch.zeros_like(mask)
    for how in ("token", "sequence"):
        assert reduce_tokens(values, empty, how).item() == 0.0
    with pytest.raises(ValueError):
        reduce_tokens(values, mask, "batch")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from(["token", "sequence"]))
def test_reduce_tokens_property(batch, length, seed, how):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) < 0.5
    v, m = values.tolist(), mask.tolist()
    if how == "token":
        picked = [x for row, mrow in zip(v, m) for x, keep in zip(row, mrow) if keep]
        expected = sum(picked) / len(picked) if picked else 0.0
    else:
        means = [sum(x for x, k in zip(row, mrow) if k) / sum(mrow) for row, mrow in zip(v, m) if any(mrow)]
        expected = sum(means) / len(means) if means else 0.0
    assert reduce_tokens(values, mask, how).item() == pytest.approx(expected, abs=1e-12)


# -----------------------------------------------------------------------------
# property test against the reference

@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(DIVERGENCES),
    batch=st.integers(1, 3),
    length=st.integers(1, 5),
    vocab=st.integers(2, 40),
    temperature=st.floats(0.25, 4.0),
    weight=st.floats(0.0, 1.0),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
    n_masked=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_against_reference(kind, batch, length, vocab, temperature, weight, scale, n_masked, seed):
    zs = logits(batch, length, vocab, scale=scale, seed=seed)
    zt = logits(batch, length, vocab, scale=scale, seed=seed + 1)
    # a masked vocab slice (shared −inf), always leaving at least one live token
    n_masked = min(n_masked, vocab - 1)
    if n_masked:
        zs[..., -n_masked:] = -float("inf")
        zt[..., -n_masked:] = -float("inf")
    out = token_divergence(kind, zs, zt, temperature=temperature, beta=weight, alpha=weight)
    assert out.shape == (batch, length) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    ref = reference(kind, zs, zt, temperature, beta=weight, alpha=weight)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=2e-5)


# -----------------------------------------------------------------------------
# gradients

@pytest.mark.parametrize("kind", DIVERGENCES)
def test_gradcheck(kind):
    zs = logits(3, 7, seed=22, dtype=torch.float64).requires_grad_()
    zt = logits(3, 7, seed=23, dtype=torch.float64).requires_grad_()
    assert token_divergence(kind, zs, zt).dtype == torch.float64
    torch.autograd.gradcheck(
        lambda a, b: token_divergence(kind, a, b, temperature=1.5, beta=0.3, alpha=0.2), (zs, zt)
    )


# -----------------------------------------------------------------------------
# chunked path vs unchunked

N, HS, HT, V = 37, 16, 24, 50  # N = 37 is divisible by none of the chunk sizes below but 1


def make_inputs(seed=0, dtype=torch.float32, pad=0, student_grad=True, teacher_grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    hs = r(N, HS).requires_grad_(student_grad)
    ws = (r(V, HS) * 0.5).requires_grad_(student_grad)
    ht = r(N, HT).requires_grad_(teacher_grad)
    wt = (r(V + pad, HT) * 0.5).requires_grad_(teacher_grad)
    return hs, ws, ht, wt


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 10, 64])
def test_chunked_matches_unchunked(kind, chunk_size):
    hs, ws, ht, wt = make_inputs(seed=1)
    kw = dict(temperature=2.0, beta=0.3, alpha=0.2)
    out = chunked_kd_loss(kind, hs, ws, ht, wt, chunk_size=chunk_size, **kw)
    ref = token_divergence(kind, hs @ ws.T, ht @ wt.T, **kw).sum()
    assert_rel_close(out, ref)
    for a, b in zip(grads(out, (hs, ws)), grads(ref, (hs, ws))):
        assert_rel_close(a, b)


@pytest.mark.parametrize("kind", ["fkl", "jsd"])
def test_chunked_teacher_logits_and_padded_head(kind):
    hs, ws, ht, wt = make_inputs(seed=2, pad=7)
    ref = token_divergence(kind, hs @ ws.T, ht @ wt[:V].T).sum()
    ref_grads = grads(ref, (hs, ws))
    for teacher, weight in ((ht, wt), (ht @ wt.T, None)):  # padded head, padded logits [N, V + 7]
        out = chunked_kd_loss(kind, hs, ws, teacher, weight, chunk_size=9)
        assert_rel_close(out, ref)
        for a, b in zip(grads(out, (hs, ws)), ref_grads):
            assert_rel_close(a, b)


def test_chunked_tied_weights():
    # LM head tied to the input embedding: gradient from both uses must add up
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(V, HS, generator=g).requires_grad_()
    mix = torch.randn(HS, HS, generator=g) / HS**0.5
    ids = torch.randint(0, V, (N,), generator=g)
    ht, wt = torch.randn(N, HT, generator=g), torch.randn(V, HT, generator=g)

    hidden = torch.tanh(emb[ids] @ mix)
    out = chunked_kd_loss("fkl", hidden, emb, ht, wt, chunk_size=8)
    (g_out,) = grads(out, (emb,))
    hidden = torch.tanh(emb[ids] @ mix)
    ref = token_divergence("fkl", hidden @ emb.T, ht @ wt.T).sum()
    (g_ref,) = grads(ref, (emb,))
    assert_rel_close(out, ref)
    assert_rel_close(g_out, g_ref)


def okd_fn(alpha=0.4, temperature=1.5):
    def fn(zs, zt, y):
        student = token_divergence("fkl", zs, zt, temperature=temperature)
        teacher = alpha * token_divergence("rkl", zs, zt, temperature=temperature) + (1 - alpha) * token_ce(zt, y)
        return student, teacher
    return fn


def okd_labels(seed=4):
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed))
    labels[::5] = -100
    return labels


@pytest.mark.parametrize("teacher_as_logits", [False, True])
def test_chunked_okd_gradient_routing(teacher_as_logits):
    hs, ws, ht, wt = make_inputs(seed=5, pad=3, teacher_grad=True)
    labels, fn = okd_labels(), okd_fn()

    # reference: one forward of each model; student loss with teacher detached, teacher loss
    # with student detached
    zs, zt_full = hs @ ws.T, ht @ wt.T
    zt = zt_full[:, :V]
    s_ref = fn(zs, zt.detach(), labels)[0].sum()
    t_ref = fn(zs.detach(), zt, labels)[1].sum()
    g_s_ref = grads(s_ref, (hs, ws))
    teacher_inputs = (zt_full,) if teacher_as_logits else (ht, wt)
    g_t_ref = grads(t_ref, teacher_inputs)

    if teacher_as_logits:
        teacher_inputs = (zt_full.detach().requires_grad_(),)
        teacher_args = (teacher_inputs[0], None)
    else:
        teacher_args = (ht, wt)
    s, t = chunked_pair_loss(fn, hs, ws, *teacher_args, labels, chunk_size=8)
    assert_rel_close(s, s_ref)
    assert_rel_close(t, t_ref)
    # differentiating the sum shows the routing: no cross terms
    g_all = grads(s + t, (hs, ws, *teacher_inputs))
    for a, b in zip(g_all, (*g_s_ref, *g_t_ref)):
        assert_rel_close(a, b)
    padded = g_all[2][:, V:] if teacher_as_logits else g_all[3][V:]
    assert (padded == 0).all()  # teacher logits / head rows beyond the student vocab get no gradient
    # each sum alone reaches only its own model
    s, t = chunked_pair_loss(fn, hs, ws, *teacher_args, labels, chunk_size=8)
    assert all((g == 0).all() for g in grads(s, teacher_inputs))
    assert all((g == 0).all() for g in grads(t, (hs, ws)))


def test_chunked_no_grad_for_frozen_inputs():
    hs, ws, ht, wt = make_inputs(seed=6)
    ws.requires_grad_(False)  # a frozen LM head: only the hidden states get a gradient
    out = chunked_kd_loss("fkl", hs, ws, ht, wt, chunk_size=10)
    out.backward()
    assert hs.grad is not None and ws.grad is None and ht.grad is None and wt.grad is None
    s, t = chunked_pair_loss(lambda zs, zt, y: (token_divergence("rkl", zs, zt), None), hs, ws, ht, wt)
    assert t is None
    # nothing requires grad: plain values
    with torch.no_grad():
        v = chunked_kd_loss("fkl", hs, ws, ht, wt, chunk_size=10)
    assert not v.requires_grad and torch.isclose(v, out.detach())


def test_chunked_bf16():
    hs, ws, ht, wt = make_inputs(seed=7, dtype=torch.bfloat16)
    out = chunked_kd_loss("fkl", hs, ws, ht, wt, chunk_size=10)
    assert out.dtype == torch.float32
    ref = token_divergence("fkl", hs @ ws.T, ht @ wt.T).sum()
    g_out, g_ref = grads(out, (hs, ws)), grads(ref, (hs, ws))
    assert_rel_close(out, ref, rel=1e-3)
    for a, b in zip(g_out, g_ref):
        assert a.dtype == torch.bfloat16
        assert_rel_close(a, b, rel=2e-2)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_gradcheck(kind):
    g = torch.Generator().manual_seed(8)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    hs, ws, ht, wt = r(7, 4).requires_grad_(), r(6, 4).requires_grad_(), r(7, 5), r(8, 5)
    torch.autograd.gradcheck(
        lambda a, b: chunked_kd_loss(kind, a, b, ht, wt, temperature=1.3, beta=0.3, chunk_size=3), (hs, ws)
    )


def test_chunked_gradcheck_teacher_side():
    g = torch.Generator().manual_seed(9)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    hs, ws = r(7, 4), r(6, 4)
    ht, wt = r(7, 5).requires_grad_(), r(8, 5).requires_grad_()
    labels = torch.tensor([0, 5, -100, 2, 3, 1, 4])
    fn = okd_fn()
    torch.autograd.gradcheck(lambda a, b: chunked_pair_loss(fn, hs, ws, a, b, labels, chunk_size=3)[1], (ht, wt))


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(DIVERGENCES),
    n=st.integers(1, 30),
    vocab=st.integers(2, 30),
    pad=st.integers(0, 4),
    chunk_size=st.integers(1, 35),
    temperature=st.floats(0.5, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_property(kind, n, vocab, pad, chunk_size, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, 6, generator=g).requires_grad_()
    ws = torch.randn(vocab, 6, generator=g).requires_grad_()
    ht, wt = torch.randn(n, 5, generator=g), torch.randn(vocab + pad, 5, generator=g)
    out = chunked_kd_loss(kind, hs, ws, ht, wt, temperature=temperature, chunk_size=chunk_size)
    ref = token_divergence(kind, hs @ ws.T, ht @ wt[:vocab].T, temperature=temperature).sum()
    assert_rel_close(out, ref)
    for a, b in zip(grads(out, (hs, ws)), grads(ref, (hs, ws))):
        assert_rel_close(a, b)


def test_chunked_without_teacher():
    # SFT: cross entropy of the student alone, teacher=None
    hs, ws, _, _ = make_inputs(seed=10)
    labels = okd_labels()
    out, t = chunked_pair_loss(lambda zs, zt, y: (token_ce(zs, y), None), hs, ws, None, None, labels, chunk_size=10)
    assert t is None
    ref = token_ce(hs @ ws.T, labels).sum()
    assert_rel_close(out, ref)
    for a, b in zip(grads(out, (hs, ws)), grads(ref, (hs, ws))):
        assert_rel_close(a, b)


# -----------------------------------------------------------------------------
# closed-form gradients (KDClosedForm) against autograd of token_divergence / token_ce

def autograd_pair(kind, zs, zt, y, temperature, scale, ce_weight, module_alpha, kl_weight="uniform", beta=0.5):
    """The reference: the same objectives through autograd, each loss w.r.t. its own logits."""
    zs, zt = zs.detach().requires_grad_(), zt.detach().requires_grad_()
    s = scale * token_divergence(kind, zs, zt.detach(), temperature=temperature, beta=beta)
    if ce_weight:
        s = s + ce_weight * token_ce(zs, y)
    (g_s,) = torch.autograd.grad(s.sum(), zs)
    if module_alpha is None:
        return s.detach(), None, g_s, None
    kl = token_divergence("rkl", zs.detach(), zt, temperature=temperature)
    if kl_weight == "teacher_miss":  # 1 − p_T(y) at τ = 1, read off the softmax; 0 at ignored labels
        p_y = torch.softmax(zt.detach().double(), -1).gather(-1, y.clamp(min=0)[:, None]).squeeze(-1)
        kl = kl * ((1 - p_y) * (y != -100)).float()
    t = module_alpha * scale * kl + (1 - module_alpha) * token_ce(zt, y)
    (g_t,) = torch.autograd.grad(t.sum(), zt)
    return s.detach(), t.detach(), g_s, g_t


@pytest.mark.parametrize("kind", KDClosedForm.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
@pytest.mark.parametrize("module_alpha,kl_weight", [(None, "uniform"), (0.4, "uniform"), (0.4, "teacher_miss")])
def test_closed_form_matches_autograd(kind, temperature, ce_weight, module_alpha, kl_weight):
    zs, zt = logits(23, 40, scale=3.0, seed=21), logits(23, 40, scale=3.0, seed=22)
    y = okd_labels()[:23].clone() % 40  # includes ignored (-100) positions
    y[::5] = -100
    fn = KDClosedForm(kind, temperature=temperature, scale=temperature**2, ce_weight=ce_weight,
                      module_alpha=module_alpha, module_scale=temperature**2, module_kl_weight=kl_weight)
    out = fn.with_grads(zs, zt, y)
    ref = autograd_pair(kind, zs, zt, y, temperature, temperature**2, ce_weight, module_alpha, kl_weight)
    for a, b in zip(out, ref):
        if b is None:
            assert a is None
        else:
            assert a.dtype == torch.float32
            assert_rel_close(a, b)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_jsd_beta_matches_autograd(beta, temperature):
    """JSD_β's closed-form student gradient (1−β)·q∘(log q − log m − KL(q‖m))/τ against autograd of
    token_divergence, away from β = 0.5 and at the endpoints (exactly fkl and rkl); with OKD's module loss."""
    zs, zt = logits(17, 30, scale=4.0, seed=41), logits(17, 30, scale=4.0, seed=42)
    y = torch.arange(17) % 30
    out = KDClosedForm("jsd", temperature=temperature, scale=temperature**2, beta=beta,
                       module_alpha=0.3, module_scale=temperature**2).with_grads(zs, zt, y)
    ref = autograd_pair("jsd", zs, zt, y, temperature, temperature**2, 0.0, 0.3, beta=beta)
    for a, b in zip(out, ref):  # student loss and gradient, module loss and gradient
        assert_rel_close(a, b)
    with pytest.raises(ValueError, match="beta"):
        KDClosedForm("jsd", beta=1.5)


def test_okd_module_loss_kl_weight_autograd_path_equals_closed_form():
    """online.kl_weight teacher_miss through OnlineTeacherKD.module_token_loss (the autograd path,
    used for divergences without a closed form) gives the closed form's module loss; uniform is the paper's."""
    from types import SimpleNamespace

    from okd.config import Config
    from okd.methods.okd import OnlineTeacherKD

    zs, zt = logits(23, 40, scale=3.0, seed=31), logits(23, 40, scale=3.0, seed=32)
    y = okd_labels()[:23].clone() % 40
    for weight in ("uniform", "teacher_miss"):
        cfg = Config.model_validate({"method": {"name": "okd", "temperature": 2.0},
                                     "online": {"alpha": 0.3, "kl_weight": weight}})
        method = SimpleNamespace(cfg=cfg, tau2=4.0)
        got = OnlineTeacherKD.module_token_loss(method, zs, zt, y)
        _, want, _, _ = KDClosedForm("fkl", temperature=2.0, scale=4.0, module_alpha=0.3, module_scale=4.0,
                                     module_kl_weight=weight).with_grads(zs, zt, y, need=(False, False))
        assert_rel_close(got, want)
    uniform = OnlineTeacherKD.module_token_loss(
        SimpleNamespace(cfg=Config.model_validate({"online": {"alpha": 0.3}}), tau2=1.0), zs, zt, y)
    weighted = OnlineTeacherKD.module_token_loss(
        SimpleNamespace(cfg=Config.model_validate({"online": {"alpha": 0.3, "kl_weight": "teacher_miss"}}), tau2=1.0),
        zs, zt, y)
    assert (weighted <= uniform + 1e-6).all() and (weighted < uniform - 1e-4).any()  # w in [0, 1]
    with pytest.raises(ValueError, match="module_kl_weight"):
        KDClosedForm("fkl", module_alpha=0.3, module_kl_weight="hard")


@pytest.mark.parametrize("kind", KDClosedForm.KINDS)
def test_closed_form_extreme_logits(kind):
    # ±1e4 logits and a −inf vocabulary slice shared by both models: finite, equal to autograd
    zs = logits(4, 30, scale=1.0, seed=13).sign().mul(1e4)
    zt = logits(4, 30, scale=1.0, seed=14) * 1e4
    zs[:, -5:] = zt[:, -5:] = -float("inf")
    y = torch.tensor([0, 3, -100, 7])
    out = KDClosedForm(kind, module_alpha=0.3).with_grads(zs, zt, y)
    ref = autograd_pair(kind, zs, zt, y, 1.0, 1.0, 0.0, 0.3)
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_closed_form_okd_routing_through_chunks():
    # the OKD pair through chunked_pair_loss: closed form equals the autograd fn, values and all grads
    hs, ws, ht, wt = make_inputs(seed=23, pad=3, teacher_grad=True)
    labels = okd_labels()
    results = []
    for fn in (okd_fn(alpha=0.4, temperature=1.5),
               KDClosedForm("fkl", temperature=1.5, module_alpha=0.4)):
        s, t = chunked_pair_loss(fn, hs, ws, ht, wt, labels, chunk_size=8)
        results.append((s, t, *grads(s + t, (hs, ws, ht, wt))))
    for a, b in zip(*results):
        assert_rel_close(a, b)


def test_closed_form_respects_need():
    zs, zt = logits(5, 12, scale=1.0, seed=24), logits(5, 12, scale=1.0, seed=25)
    y = torch.arange(5)
    s, t, g_s, g_t = KDClosedForm("fkl", module_alpha=0.5).with_grads(zs, zt, y, need=(False, False))
    assert g_s is None and g_t is None and s.shape == t.shape == (5,)
    with pytest.raises(ValueError, match="closed form"):
        KDClosedForm("tvd")
