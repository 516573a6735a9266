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
# closed-form losses and logit gradients for the common KD objectives
#
# Autograd through log_softmax, the KL sums and cross entropy makes ~3x more passes over a
# [chunk, V] tensor than the analytic gradients need, and on a 49k vocabulary these passes cost as
# much as the output-layer matmuls (benchmarks/bench_losses.py --closed-form). With p = softmax(z_T/τ),
# q = softmax(z_S/τ), s = softmax(z) at τ = 1 and e_y the one-hot label:
#   ∂/∂z_S KL(p‖q) = (q − p)/τ                   ∂/∂z_T KL(q‖p) = (p − q)/τ
#   ∂/∂z_S KL(q‖p) = q ∘ (log q − log p − KL(q‖p))/τ
#   ∂/∂z CE(z, y)  = s − e_y                      (0 for ignored labels)
# Each is checked against autograd of token_divergence / token_ce in tests/test_losses.py.

class KDClosedForm:
    """Per-token KD losses with their logit gradients, for chunked_pair_loss (no autograd).

    Student loss:       scale·D(p, q) + ce_weight·CE(z_S, y),  D = KL(p‖q) ("fkl") or KL(q‖p) ("rkl")
    Teacher loss (with module_alpha set, the OKD online module):
                        module_alpha·module_scale·KL(q‖p) + (1 − module_alpha)·CE(z_T, y)
    Called as fn(zs, zt, y, need=(student_grad, teacher_grad)); returns
    (student_per_token, teacher_per_token | None, d student_sum/d zs | None, d teacher_sum/d zt | None).
    """

    returns_grads = True
    KINDS = ("fkl", "rkl")

    def __init__(self, kind="fkl", *, temperature=1.0, scale=1.0, ce_weight=0.0, module_alpha=None,
                 module_scale=1.0, ignore_index=-100):
        if kind not in self.KINDS:
            raise ValueError(f"closed form covers {', '.join(self.KINDS)}, not {kind!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if module_alpha is not None:
            _check_weight("module_alpha", module_alpha)
        self.kind, self.tau, self.scale, self.ce_weight = kind, float(temperature), scale, ce_weight
        self.module_alpha, self.module_scale, self.ignore_index = module_alpha, module_scale, ignore_index

    def _ce(self, log_s, y):
        """CE per token from log_softmax(z) (τ = 1), and the kept-label mask and safe indices."""
        keep = y != self.ignore_index
        safe_y = torch.where(keep, y, 0)
        ce = -log_s.gather(-1, safe_y[:, None]).squeeze(-1) * keep
        return ce, keep, safe_y

    def _sub_onehot(self, g, weight, keep, safe_y):
        """g[t, y_t] -= weight for kept tokens (in place)."""
        g.scatter_add_(-1, safe_y[:, None], (-weight * keep.to(g.dtype))[:, None])

    def __call__(self, zs, zt, y, need=(True, True)):
        # Written for memory: at most four [n, V] float32 tensors live at once (d, q, p and one
        # temporary), reusing buffers in place where a value is no longer needed.
        dtype = torch.promote_types(_compute_dtype(zs), _compute_dtype(zt))
        zs, zt = zs.to(dtype), zt.to(dtype)
        tau, module = self.tau, self.module_alpha is not None
        want_s, want_t = need
        log_q = F.log_softmax(zs / tau if tau != 1.0 else zs, dim=-1)
        log_p = F.log_softmax(zt / tau if tau != 1.0 else zt, dim=-1)
        # cross entropies need log-softmax at τ = 1: the same tensors when τ = 1
        log_s_student = (log_q if tau == 1.0 else F.log_softmax(zs, dim=-1)) if self.ce_weight else None
        log_s_teacher = (log_p if tau == 1.0 else F.log_softmax(zt, dim=-1)) if module else None
        ce_s = self._ce(log_s_student, y) if self.ce_weight else None
        ce_t = self._ce(log_s_teacher, y) if module else None
        d = log_p - log_q  # log p − log q
        q, p = log_q.exp_(), log_p.exp_()  # in place: the log-probabilities are not needed any more
        # at τ = 1 the CE softmaxes are q and p themselves (their buffers were exponentiated above)
        soft_s = None if not self.ce_weight else (q if tau == 1.0 else log_s_student.exp_())
        soft_t = None if not module else (p if tau == 1.0 else log_s_teacher.exp_())

        def masked_sum(a, d):  # Σ a·d over the vocabulary with 0·log 0 = 0 (mask before summing)
            t = a * d
            return t.masked_fill_(a == 0, 0.0).sum(-1)

        kl_q_p = -masked_sum(q, d) if (self.kind == "rkl" or module) else None
        c = self.scale / tau
        if self.kind == "fkl":
            s_loss = self.scale * masked_sum(p, d)
        else:
            s_loss = self.scale * kl_q_p
        g_s = g_t = None
        if want_s and self.kind == "rkl":  # q ∘ (log q − log p − KL(q‖p)) / τ
            g_s = (d + kl_q_p[:, None]).mul_(q).masked_fill_(q == 0, 0.0).mul_(-c)
        del d
        if module and want_t:  # α·m·(p − q)/τ + (1 − α)(softmax(z_T) − e_y)
            a, m = self.module_alpha, self.module_scale
            g_t = (p - q).mul_(a * m / tau)
            g_t.addcmul_(soft_t, ce_t[1][:, None].to(dtype), value=1.0 - a)
            self._sub_onehot(g_t, 1.0 - a, ce_t[1], ce_t[2])
        if want_s and self.kind == "fkl":  # (q − p)/τ, in q's buffer unless q is still needed
            g_s = (q - p if soft_s is q else q.sub_(p)).mul_(c)
        if want_s and self.ce_weight:
            g_s.addcmul_(soft_s, ce_s[1][:, None].to(dtype), value=self.ce_weight)
            self._sub_onehot(g_s, self.ce_weight, ce_s[1], ce_s[2])
        if self.ce_weight:
            s_loss = s_loss + self.ce_weight * ce_s[0]
        t_loss = None
        if module:
            t_loss = self.module_alpha * self.module_scale * kl_q_p + (1.0 - self.module_alpha) * ce_t[0]
        return s_loss, t_loss, g_s, g_t


# -----------------------------------------------------------------------------
# chunked path for training

def _matmul_grads(g, h, w, need_h, need_w, grad_h_out, grad_w_acc):
    """Backward of logits = h @ w.T for one chunk: write grad_h into grad_h_out, add grad_w into grad_w_acc."""
    g = g.to(h.dtype)
    if need_h:
        grad_h_out.copy_(g @ w)
    if need_w:
        # in-place addmm_ is never autocast: under bf16 autocast it would run this product in fp32
        if grad_w_acc.dtype == g.dtype and not _autocast_on(h.device.type):
            grad_w_acc.addmm_(g.t(), h)
        else:  # bf16 chunk product (explicit or autocast), accumulated over chunks in float32
            grad_w_acc += (g.t() @ h).to(grad_w_acc.dtype)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


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

        def _teacher_grads(gz, i, j):
            if teacher_is_logits:
                g_ht[i:j, :vocab] = gz.to(g_ht.dtype)
            else:
                _matmul_grads(gz, ht[i:j], wt, need_ht, need_wt, g_ht[i:j] if need_ht else None,
                              g_wt[:vocab] if need_wt else None)

        for i in range(0, n, chunk_size):
            j = min(i + chunk_size, n)
            # logits in the input dtype (bf16 stays bf16); fn upcasts for the loss
            zs = (hs[i:j] @ ws.t()).requires_grad_(need_s)
            if no_teacher:
                zt = None
            else:
                zt = (ht[i:j, :vocab] if teacher_is_logits else ht[i:j] @ wt.t()).detach().requires_grad_(need_t)
            y = None if labels is None else labels[i:j]
            if getattr(fn, "returns_grads", False):  # closed-form gradients (KDClosedForm): no autograd
                s_loss, t_loss, g_zs, g_zt = fn(zs.detach(), None if zt is None else zt.detach(), y,
                                                need=(need_s, need_t))
                if need_s:
                    _matmul_grads(g_zs, hs[i:j], ws, need_hs, need_ws, g_hs[i:j] if need_hs else None, g_ws)
                if t_loss is not None and need_t:
                    _teacher_grads(g_zt, i, j)
                s_total += s_loss.sum().to(acc)
                if t_loss is not None:
                    has_teacher_loss = True
                    t_total += t_loss.sum().to(acc)
                continue
            with torch.enable_grad():
                s_loss, t_loss = fn(zs, zt, y)
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
                _teacher_grads(gz, i, j)
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
    differentiated by autograd; or an fn with `returns_grads = True` (KDClosedForm) called as
    fn(zs, zt, y, need=(student_grad, teacher_grad)) that also returns the two sums' logit gradients.

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

    if kind in KDClosedForm.KINDS:
        fn = KDClosedForm(kind, temperature=temperature)
    else:
        def fn(zs, zt, _labels):
            return token_divergence(kind, zs, zt, temperature=temperature, beta=beta, alpha=alpha), None

    s, _ = chunked_pair_loss(fn, student_hidden, student_weight, teacher, teacher_weight, chunk_size=chunk_size)
    return s
