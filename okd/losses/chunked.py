"""The chunked path for training: a pair of per-token losses over hidden states and LM heads, a
chunk of tokens at a time, with the gradients computed inside the forward (the Liger "fused linear
cross entropy" trick), so full [tokens, vocab] logits never exist at once.

The per-token losses follow okd.losses.protocol.
"""

import torch

from okd.losses.protocol import ClosedFormLoss, as_chunk_loss

# Tokens per chunk. A chunk holds about five [chunk, V] float32 tensors at its peak (~0.9 MiB per
# token at V = 49,152); 512 keeps the extra peak memory of an 8 x 512-token batch at ~17% of the
# unchunked computation's, at the same speed (benchmarks/bench_losses.py).
CHUNK_SIZE = 512


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
            if isinstance(fn, ClosedFormLoss):  # analytic gradients: no autograd
                s_loss, t_loss, g_zs, g_zt = fn.with_grads(zs.detach(), None if zt is None else zt.detach(), y,
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
                s_loss, t_loss = fn.per_token(zs, zt, y)
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
    fn: a ChunkLoss (okd.losses.protocol): an AutogradLoss, whose per_token(student_logits [n, V],
    teacher_logits [n, V], labels [n] | None) -> (student_per_token [n], teacher_per_token [n] | None)
    autograd differentiates, or a ClosedFormLoss (KDClosedForm), whose with_grads(zs, zt, y, need) also
    returns the two sums' logit gradients; a plain function is taken as an AutogradLoss's per_token.

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
    s, t = _ChunkedPairLoss.apply(student_hidden, student_weight, teacher, teacher_weight, labels, as_chunk_loss(fn),
                                  chunk_size, info)
    return s, (t if info["has_teacher_loss"] else None)
