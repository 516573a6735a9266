"""Divergences for knowledge distillation, exact and chunked.

Notation: teacher logits z_T, student logits z_S, temperature τ,
p = softmax(z_T / τ), q = softmax(z_S / τ); every divergence is summed over the vocabulary
at each token position:

    fkl          KL(p‖q) = Σ p (log p − log q)
    rkl          KL(q‖p)
    jsd(β)       β·KL(p‖m) + (1−β)·KL(q‖m),  m = β·p + (1−β)·q;
                 β = 0 is fkl and β = 1 is rkl exactly (TRL GKDTrainer convention; the
                 formula itself degenerates to 0 at both ends)
    tvd          ½ Σ |p − q|
    skl(α)       KL(p ‖ α·p + (1−α)·q)      (DistiLLM skew KL, α = 0.1 by default)
    srkl(α)      KL(q ‖ (1−α)·p + α·q)      (DistiLLM skew reverse KL)
    ce           −log softmax(z_S)(y_t)     (ground truth token, no temperature)

Everything is computed from log_softmax in float32 (float64 stays float64); mixtures go through
logsumexp, log m = logaddexp(log β + log p, log(1−β) + log q), and 0·log 0 = 0, so exact zeros
(−inf logits, e.g. a masked vocabulary slice) and huge logits (±1e4) stay finite. No τ² factor here:
that belongs to the loss that uses these.

`chunked_pair_loss` evaluates a pair of per-token losses over hidden states and LM heads a chunk
of tokens at a time, computing the gradients inside the forward (the Liger "fused linear cross
entropy" trick), so full [tokens, vocab] logits never exist at once.
"""

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl")

# Tokens per chunk. A chunk holds about five [chunk, V] float32 tensors at its peak (~0.9 MiB per
# token at V = 49,152); 512 keeps the extra peak memory of an 8 x 512-token batch at ~17% of the
# unchunked computation's, at the same speed (benchmarks/bench_losses.py).
CHUNK_SIZE = 512


# -----------------------------------------------------------------------------
# exact per-token divergences

def _kl(log_a, log_b):
    """Σ a (log a − log b) over the last axis, with 0·log 0 = 0."""
    a = log_a.exp()
    # mask by a > 0 (not log_a > -inf): where a underflows, log_b may be -inf and 0·inf is NaN.
    # The masking happens before the product so that no NaN reaches the backward pass either.
    diff = torch.where(a > 0, log_a - log_b, 0.0)
    return (a * diff).sum(-1)


def _log_mix(w, log_a, log_b):
    """log(w·a + (1−w)·b), through logaddexp."""
    if w == 0.0:
        return log_b
    if w == 1.0:
        return log_a
    # clamp -inf to the most negative finite number: where a and b are both 0, logaddexp's
    # backward would otherwise compute exp(-inf - -inf) = NaN (clamp passes no gradient there).
    lo = torch.finfo(log_a.dtype).min
    return torch.logaddexp(log_a.clamp_min(lo) + math.log(w), log_b.clamp_min(lo) + math.log1p(-w))


def _check_weight(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _compute_dtype(t):
    # float32 accumulation for bf16/fp16/fp32 inputs; float64 stays float64 (gradcheck)
    return torch.promote_types(t.dtype, torch.float32)


def token_divergence(kind, student_logits, teacher_logits, *, temperature=1.0, beta=0.5, alpha=0.1):
    """Unreduced divergence between tempered teacher p and student q at every position.

    student_logits, teacher_logits: [..., V] (same shape). Returns [...] in float32 (float64 for
    float64 inputs), without the τ² factor.
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid kinds: {', '.join(DIVERGENCES)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; slice a padded vocabulary to the shared one first"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_weight("beta", beta)
    _check_weight("alpha", alpha)

    dtype = torch.promote_types(_compute_dtype(student_logits), _compute_dtype(teacher_logits))
    zs, zt = student_logits.to(dtype), teacher_logits.to(dtype)
    if temperature != 1.0:
        zs, zt = zs / temperature, zt / temperature
    log_q = F.log_softmax(zs, dim=-1)
    log_p = F.log_softmax(zt, dim=-1)

    if kind == "fkl":
        return _kl(log_p, log_q)
    if kind == "rkl":
        return _kl(log_q, log_p)
    if kind == "jsd":
        if beta == 0.0:  # TRL convention: the endpoints are the plain KLs, not the degenerate 0
            return _kl(log_p, log_q)
        if beta == 1.0:
            return _kl(log_q, log_p)
        log_m = _log_mix(beta, log_p, log_q)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    if kind == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if kind == "skl":
        return _kl(log_p, _log_mix(alpha, log_p, log_q))
    # srkl
    return _kl(log_q, _log_mix(alpha, log_q, log_p))


def token_ce(student_logits, labels, *, ignore_index=-100):
    """Per-position cross entropy −log softmax(z_S)(y) (no temperature), 0 where labels == ignore_index."""
    dtype = _compute_dtype(student_logits)
    logits = student_logits.to(dtype).reshape(-1, student_logits.shape[-1])
    ce = F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index, reduction="none")
    return ce.view(labels.shape)


def reduce_tokens(values, mask, how="token"):
    """Average per-token values over masked positions.

    how="token": Σ over masked / number masked (0 if none).
    how="sequence": each sequence's (first axis) mean over its masked tokens, then the mean over
    sequences that have any (0 if none).
    """
    mask = mask.bool()
    # where, not multiply: unscored positions may hold inf/NaN (e.g. fully masked padding)
    values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if how == "token":
        return values.sum() / mask.sum().clamp_min(1)
    if how == "sequence":
        sums = values.reshape(values.shape[0], -1).sum(1)
        counts = mask.reshape(mask.shape[0], -1).sum(1)
        has = counts > 0
        per_seq = sums / counts.clamp_min(1)
        return per_seq.sum() / has.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {how!r}; valid: 'token', 'sequence'")


# -----------------------------------------------------------------------------
# chunked path for training

def _matmul_grads(g, h, w, need_h, need_w, grad_h_out, grad_w_acc):
    """Backward of logits = h @ w.T for one chunk: write grad_h into grad_h_out, add grad_w into grad_w_acc."""
    g = g.to(h.dtype)
    if need_h:
        grad_h_out.copy_(g @ w)
    if need_w:
        if grad_w_acc.dtype == g.dtype:
            grad_w_acc.addmm_(g.t(), h)
        else:  # bf16 chunk product, accumulated over chunks in float32
            grad_w_acc += (g.t() @ h).to(grad_w_acc.dtype)


class _ChunkedPairLoss(torch.autograd.Function):
    """Forward computes both loss sums and all input gradients chunk by chunk; backward only scales."""

    @staticmethod
    def forward(ctx, student_hidden, student_weight, teacher, teacher_weight, labels, fn, chunk_size, info):
        n, vocab = student_hidden.shape[0], student_weight.shape[0]
        no_teacher = teacher is None
        teacher_is_logits = teacher_weight is None
        grad_on = info["grad_enabled"]  # under torch.no_grad nothing will call backward
        need_hs, need_ws = grad_on and student_hidden.requires_grad, grad_on and student_weight.requires_grad
        need_ht = grad_on and not no_teacher and teacher.requires_grad
        need_wt = grad_on and teacher_weight is not None and teacher_weight.requires_grad
        need_s, need_t = need_hs or need_ws, need_ht or need_wt

        hs, ws = student_hidden.detach(), student_weight.detach()
        ht = hs if no_teacher else teacher.detach()  # (ht only sets dtypes when there is no teacher)
        wt = None if teacher_is_logits else teacher_weight.detach()[:vocab]  # padded teacher head: first V rows

        # gradient buffers; weight grads accumulate in float32 across chunks
        acc_s, acc_t = (torch.promote_types(x.dtype, torch.float32) for x in (hs, ht))
        g_hs = torch.empty_like(hs) if need_hs else None
        g_ws = torch.zeros(ws.shape, dtype=acc_s, device=ws.device) if need_ws else None
        g_ht = torch.zeros_like(ht) if need_ht else None  # zeros: teacher logits beyond V get no grad
        g_wt = torch.zeros(teacher_weight.shape, dtype=acc_t, device=ht.device) if need_wt else None

        acc = torch.promote_types(acc_s, acc_t)
        s_total = torch.zeros((), dtype=acc, device=hs.device)
        t_total = torch.zeros((), dtype=acc, device=hs.device)
        has_teacher_loss = False
        for i in range(0, n, chunk_size):
            j = min(i + chunk_size, n)
            # logits in the input dtype (bf16 stays bf16); fn upcasts for the loss
            zs = (hs[i:j] @ ws.t()).requires_grad_(need_s)
            if no_teacher:
                zt = None
            else:
                zt = (ht[i:j, :vocab] if teacher_is_logits else ht[i:j] @ wt.t()).detach().requires_grad_(need_t)
            with torch.enable_grad():
                s_loss, t_loss = fn(zs, zt, None if labels is None else labels[i:j])
                s_sum = s_loss.sum()
                t_sum = None if t_loss is None else t_loss.sum()
            # routing: each loss is differentiated only w.r.t. its own model's logits, which is
            # the same as detaching the other model's logits
            if need_s and s_sum.requires_grad:
                (gz,) = torch.autograd.grad(s_sum, zs, retain_graph=t_sum is not None and need_t,
                                            allow_unused=True, materialize_grads=True)
                _matmul_grads(gz, hs[i:j], ws, need_hs, need_ws, g_hs[i:j] if need_hs else None, g_ws)
            elif need_hs:
                g_hs[i:j].zero_()
            if t_sum is not None and need_t and t_sum.requires_grad:
                (gz,) = torch.autograd.grad(t_sum, zt, allow_unused=True, materialize_grads=True)
                if teacher_is_logits:
                    g_ht[i:j, :vocab] = gz.to(g_ht.dtype)
                else:
                    _matmul_grads(gz, ht[i:j], wt, need_ht, need_wt, g_ht[i:j] if need_ht else None,
                                  g_wt[:vocab] if need_wt else None)
            s_total += s_sum.detach().to(acc)
            if t_sum is not None:
                has_teacher_loss = True
                t_total += t_sum.detach().to(acc)

        info["has_teacher_loss"] = has_teacher_loss
        # the grads are intermediates, not inputs or outputs: keep them on ctx directly
        ctx.grads = (g_hs, g_ws, g_ht, g_wt)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype, None if no_teacher else teacher.dtype,
                      None if teacher_weight is None else teacher_weight.dtype)
        return s_total, t_total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_s, grad_t):
        out = []
        for k, (g, dtype) in enumerate(zip(ctx.grads, ctx.dtypes)):
            scale = grad_s if k < 2 else grad_t  # student inputs take the student sum's grad
            out.append(None if g is None else (g * scale).to(dtype))
        return (*out, None, None, None, None)


def chunked_pair_loss(fn, student_hidden, student_weight, teacher, teacher_weight=None, labels=None, *,
                      chunk_size=CHUNK_SIZE):
    """Sum of per-token student and teacher losses over N tokens, computed chunk by chunk.

    student_hidden [N, Hs], student_weight [V, Hs] (the LM head).
    teacher: hidden states [N, Ht] with teacher_weight [V', Ht], or logits [N, V'] with
    teacher_weight None; V' ≥ V and only the first V entries are used (padded teacher head).
    teacher=None (no teacher, e.g. SFT cross entropy): fn receives None as teacher logits.
    labels [N] long or None, passed through to fn.
    fn(student_logits [n, V], teacher_logits [n, V], labels [n] | None)
        -> (student_per_token [n], teacher_per_token [n] | None)

    Returns (student_loss_sum, teacher_loss_sum or None). The student sum's gradient goes only to
    student_hidden / student_weight (teacher logits detached); the teacher sum's only to the
    teacher inputs (student logits detached). Inputs that don't require grad get none computed.
    """
    if student_hidden.dim() != 2 or student_weight.dim() != 2:
        raise ValueError("student_hidden must be [N, Hs] and student_weight [V, Hs]")
    n, vocab = student_hidden.shape[0], student_weight.shape[0]
    if teacher is not None:
        if teacher.shape[0] != n:
            raise ValueError(f"teacher has {teacher.shape[0]} tokens, student {n}")
        teacher_vocab = teacher.shape[1] if teacher_weight is None else teacher_weight.shape[0]
        if teacher_vocab < vocab:
            raise ValueError(f"teacher vocabulary {teacher_vocab} is smaller than the student's {vocab}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    info = {"grad_enabled": torch.is_grad_enabled()}
    s, t = _ChunkedPairLoss.apply(student_hidden, student_weight, teacher, teacher_weight, labels, fn,
                                  chunk_size, info)
    return s, (t if info["has_teacher_loss"] else None)


def chunked_kd_loss(kind, student_hidden, student_weight, teacher, teacher_weight=None, *, temperature=1.0,
                    beta=0.5, alpha=0.1, chunk_size=CHUNK_SIZE):
    """Σ over tokens of token_divergence(kind, ...) from hidden states, chunked (no τ² factor)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid kinds: {', '.join(DIVERGENCES)}")

    def fn(zs, zt, _labels):
        return token_divergence(kind, zs, zt, temperature=temperature, beta=beta, alpha=alpha), None

    s, _ = chunked_pair_loss(fn, student_hidden, student_weight, teacher, teacher_weight, chunk_size=chunk_size)
    return s
