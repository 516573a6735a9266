"""KD losses against a sparse teacher: its top-k tokens plus one bucket for the rest of the vocabulary.

The teacher is known only through a cache (okd.models.teacher_cache): for each scored token the top-k
ids S, log p_i (i ∈ S) at τ = 1 and log Σ_{j∉S} p_j^(1/τ) at the temperatures it stored.

Estimator: the tail as one extra bucket (as TRL's server-side distillation does). Both distributions are
coarsened onto the same k + 1 buckets {i} for i ∈ S and T = V \\ S:
    teacher  p̂ = (p_S, p_T),  p_T = Σ_{j∈T} p_j           (stored, exact)
    student  q̂ = (q_S, q_T),  q_T = Σ_{j∈T} q_j = exp(logsumexp over T of log q)   (exact, from full logits)
and every divergence of okd.losses (fkl, rkl, jsd, tvd, skl, srkl) is taken between p̂ and q̂ over the
k + 1 buckets. Why this and not renormalised top-k (p and q restricted to S and renormalised):
  - it keeps the mass budget: the student is pushed to put exactly p_T outside S, where renormalised
    top-k is blind to how much mass the student leaks outside S;
  - each of these divergences is an f-divergence (jsd and the skews included), and coarsening both
    sides onto a partition can only lower it (data processing): D(p̂‖q̂) ≤ D(p‖q), with equality at
    k = V, so the loss is a consistent lower bound that becomes the exact loss at k = V;
  - its fkl gradient is the exact one on S, and on T it is q_j − p_T·q_j/q_T: the tail mass is spread
    over T in the student's own proportions.
Temperature: the tempered top-k is exact up to its normaliser (log p_i^τ = log p_i/τ − log Z_τ), but
Z_τ needs Σ_{j∈T} p_j^(1/τ), which only the full vocabulary gives. At a temperature the cache stored
(τ = 1 always; `okd teacher cache --temperature`) the bucketed loss is exact as above. Any other τ is
refused (treating the tail as one token, Σ_T p_j^(1/τ) ≈ p_T^(1/τ), was measured 130× off the live
teacher's loss at τ = 2 where the tail holds most of the mass); at k = V the tail is empty and every τ
is exact. (Renormalised top-k is the estimator for which every τ is exact, at the price of the blind
spot above.)
The CE term (method.ce_weight) and τ² factor are those of okd.methods.kd.student_token_loss.

Memory: student logits are formed chunk by chunk (okd.losses.chunked_pair_loss; the chunk's row numbers
travel as its "labels" to index the teacher rows), never for all tokens at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from okd.config import DIVERGENCES
from okd.errors import OkdError
from okd.losses.chunked import CHUNK_SIZE, chunked_pair_loss
from okd.losses.divergence import token_ce, token_divergence
from okd.losses.protocol import ClosedFormLoss



class SparseTeacher(NamedTuple):
    """The teacher's side of N scored tokens, already tempered into k (+1 tail) bucket log-probabilities."""

    ids: torch.Tensor  # [N, k] long
    log_buckets: torch.Tensor  # [N, k] or [N, k + 1] (tail last) float32, log-probabilities at τ
    has_tail: bool  # k < V


def tail_at(log_tail: torch.Tensor, temperatures: list[float], tau: float) -> torch.Tensor:
    """log Σ_T p^(1/τ) [N] from the cache's columns [N, m]; a temperature the cache did not store is an error."""
    if float(tau) not in temperatures:
        raise OkdError(unstored_temperature(tau, temperatures))
    return log_tail[:, temperatures.index(float(tau))]


def unstored_temperature(tau: float, temperatures, where: str = "the teacher cache") -> str:
    return (f"{where} holds the teacher's tail mass at τ = {', '.join(f'{t:g}' for t in temperatures)} only, not at "
            f"method.temperature={tau:g} (its loss cannot be computed exactly from the top-k); rebuild it with "
            f"`okd teacher cache ... --temperature {tau:g}`, or train at a stored temperature")


def sparse_teacher(ids, logp, log_tail, *, vocab_size: int, temperatures=(1.0,), temperature: float = 1.0):
    """SparseTeacher from cache rows (ids [N, k], logp [N, k] at τ = 1, log_tail [N, m]) at `temperature`.

    Buckets are renormalised (a no-op in exact arithmetic; it absorbs fp16 rounding of the stored values).
    """
    k = ids.shape[-1]
    has_tail = k < vocab_size
    z = logp.float() if temperature == 1.0 else logp.float() / temperature
    if has_tail:
        tail = tail_at(log_tail.float(), [float(t) for t in temperatures], temperature)
        z = torch.cat([z, tail[:, None]], dim=-1)
    return SparseTeacher(ids=ids, log_buckets=F.log_softmax(z, dim=-1), has_tail=has_tail)


def student_buckets(zs: torch.Tensor, ids: torch.Tensor, has_tail: bool, temperature: float = 1.0) -> torch.Tensor:
    """log q̂ [n, k (+1)]: the tempered student log-probabilities of the ids, and of the rest (autograd)."""
    u = zs.to(torch.promote_types(zs.dtype, torch.float32))
    u = u if temperature == 1.0 else u / temperature
    log_q = F.log_softmax(u, dim=-1)
    top = log_q.gather(-1, ids)
    if not has_tail:
        return top
    rest = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


def sparse_token_divergence(kind: str, zs, ids, teacher_log_buckets, has_tail: bool, *, temperature=1.0,
                            beta=0.5, alpha=0.1) -> torch.Tensor:
    """D(p̂‖q̂)-style divergence of okd.losses over the k (+1) buckets, per token [n] (no τ² factor)."""
    log_q = student_buckets(zs, ids, has_tail, temperature)
    return token_divergence(kind, log_q, teacher_log_buckets, temperature=1.0, beta=beta, alpha=alpha)


class SparseFKLClosedForm(ClosedFormLoss):
    """scale·KL(p̂‖q̂) + ce_weight·CE(z_S, y) per token with its logit gradient (chunked_pair_loss's
    ClosedFormLoss protocol): on S (q_i − p̂_i)/τ, on the tail (q_j − p̂_T·q_j/q_T)/τ, times scale."""

    def __init__(self, teacher: SparseTeacher, targets, *, temperature=1.0, scale=1.0, ce_weight=0.0):
        self.t, self.targets = teacher, targets
        self.tau, self.scale, self.ce_weight = float(temperature), scale, ce_weight

    def with_grads(self, zs, zt, rows, need=(True, False)):
        tau, k = self.tau, self.t.ids.shape[-1]
        zs = zs.to(torch.promote_types(zs.dtype, torch.float32))  # float32 (float64 stays float64)
        ids, lp = self.t.ids[rows], self.t.log_buckets[rows].to(zs.dtype)
        p = lp.exp()
        log_q = F.log_softmax(zs / tau if tau != 1.0 else zs, dim=-1)
        lq = log_q.gather(-1, ids)
        y = self.targets[rows] if self.ce_weight else None
        ce = -F.log_softmax(zs, -1).gather(-1, y[:, None]).squeeze(-1) if y is not None and tau != 1.0 else None
        if y is not None and tau == 1.0:
            ce = -log_q.gather(-1, y[:, None]).squeeze(-1)
        rest = lq_tail = None
        if self.t.has_tail:
            rest = log_q.scatter(-1, ids, float("-inf"))
            lq_tail = torch.logsumexp(rest, dim=-1, keepdim=True)
            lq = torch.cat([lq, lq_tail], dim=-1)
        loss = self.scale * torch.where(p > 0, p * (lp - lq), 0.0).sum(-1)
        if self.ce_weight:
            loss = loss + self.ce_weight * ce
        if not need[0]:
            return loss, None, None, None
        q = log_q.exp_()
        if self.t.has_tail:  # q_j − p̂_T · q_j / q_T on the tail (0 on S, set below)
            share = rest.sub_(lq_tail.clamp_min(torch.finfo(rest.dtype).min)).exp_()
            g = share.mul_(-p[:, k:]).add_(q)
        else:
            g = q.clone() if self.ce_weight and tau == 1.0 else q
        g.scatter_(-1, ids, q.gather(-1, ids) - p[:, :k])
        g.mul_(self.scale / tau)
        if self.ce_weight:  # + w·(softmax(z_S) − e_y), at τ = 1
            soft = q if tau == 1.0 else F.softmax(zs, dim=-1)
            g.add_(soft, alpha=self.ce_weight)
            g.scatter_add_(-1, y[:, None], torch.full_like(g[:, :1], -self.ce_weight))
        return loss, None, g, None


def sparse_kd_loss(kind: str, student_hidden, student_weight, teacher: SparseTeacher, targets, *,
                   temperature=1.0, scale=1.0, ce_weight=0.0, beta=0.5, alpha=0.1, chunk_size=CHUNK_SIZE):
    """Σ over N scored tokens of scale·D(p̂‖q̂) + ce_weight·CE, from student hidden states [N, H] and the LM
    head [V, H] (chunked); `targets` [N] are the ground-truth tokens. fkl (and jsd at β = 0) use the
    closed-form gradient, the other kinds autograd inside each chunk."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid kinds: {', '.join(DIVERGENCES)}")
    n = student_hidden.shape[0]
    if teacher.ids.shape[0] != n or targets.shape != (n,):
        raise ValueError(f"teacher rows {teacher.ids.shape[0]} / targets {tuple(targets.shape)} do not match "
                         f"the {n} scored student tokens")
    if kind == "fkl" or (kind == "jsd" and beta == 0.0):
        fn = SparseFKLClosedForm(teacher, targets, temperature=temperature, scale=scale, ce_weight=ce_weight)
    else:
        def fn(zs, _zt, rows):
            loss = scale * sparse_token_divergence(kind, zs, teacher.ids[rows], teacher.log_buckets[rows],
                                                   teacher.has_tail, temperature=temperature, beta=beta, alpha=alpha)
            if ce_weight:
                loss = loss + ce_weight * token_ce(zs, targets[rows])
            return loss, None
    rows = torch.arange(n, device=student_hidden.device)
    s, _ = chunked_pair_loss(fn, student_hidden, student_weight, None, None, labels=rows, chunk_size=chunk_size)
    return s
