"""Exact per-token divergences and cross entropy (DESIGN.md §1), from log-softmax values.

Notation: teacher logits z_T, student logits z_S, temperature τ, p = softmax(z_T / τ),
q = softmax(z_S / τ); every divergence is summed over the vocabulary at each token position:

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
"""

import math

import torch
import torch.nn.functional as F

from okd.config import DIVERGENCES


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
