"""Cross-tokenizer distillation losses over aligned groups, one value per group; the caller reduces.

Inputs are flat logits, teacher [N_t, V_t] and student [N_s, V_s], rows as in okd.crosstok.align.Groups
(a row predicts the token `labels[row]`). The teacher is frozen here: its side runs under no_grad, and
may instead come from a teacher cache (okd.crosstok.cached.CachedTeacher, in place of its logits).
Memory: chunk by chunk of rows, the teacher's quantities are computed and its [chunk, V_t] rows freed
before the student's chunk is used, so no full-vocabulary tensor of both models exists for all rows.
The student's selected rows are one index_select (autograd keeps what each chunk's backward needs).

ULD (Boizard et al. 2024, Universal Logit Distillation): with p = softmax(z_T/τ), q = softmax(z_S/τ)
sorted in decreasing order, p_(1) ≥ p_(2) ≥ …, the shorter vocabulary padded with zeros,
    ULD(p, q) = Σ_i |p_(i) − q_(i)|
(the closed form of the Wasserstein-1 distance between the two sorted distributions with unit cost:
it needs no shared vocabulary). Only the top k ranks are formed (default 256), and the rest of each
distribution enters as one tail mass P = Σ_{i>k} p_(i), Q alike:
    ULD_k = Σ_{i≤k} |p_(i) − q_(i)| + |P − Q|.
Exactness: ULD − ULD_k = Σ_{i>k} |p_(i) − q_(i)| − |Σ_{i>k} (p_(i) − q_(i))| ∈ [0, 2·min(P, Q)] (triangle
inequality); ULD_k never decreases as k grows, and it is exact when the tail differences have one sign,
in particular for k ≥ min(V_t, V_s) (beyond the shorter vocabulary one side is zero). A trained LM's
mass beyond rank 256 is small, so the error bound 2·min(P, Q) is small too.
Two pairings: positional (i-th scored token with i-th, align.positional_pairs: the paper's and TRL's,
for reference; it drifts once the tokenizations differ) and span-aligned (the rows predicting each
group's first token on both sides: both predict the start of the same text).

Hybrid: at 1-1 groups whose two tokens are a shared pair (okd.crosstok.vocab.shared_vocab: the same
bytes), the exact divergence of okd.losses.token_divergence between p and q restricted to the shared
ids M and renormalised there, p̃_i = p_i / Σ_{j∈M} p_j (q̃ alike): that is each model's distribution of
the next token given that it is one of M. Over M it is exact (no approximation, no sorting); what it
leaves out is the mass each puts outside M. With identical tokenizers M is the whole vocabulary and
this is token_divergence itself. The other groups take span-aligned ULD.

Span likelihood: log P_T(s) and log P_S(s) of every group's text by the chain rule (okd.crosstok.merge),
compared by span_divergence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from okd.crosstok.align import Groups
from okd.crosstok.merge import group_logprobs, row_chunks, span_logprobs, token_logprobs
from okd.crosstok.vocab import SharedVocab
from okd.losses.chunked import CHUNK_SIZE
from okd.losses.divergence import token_divergence

ULD_TOP_K = 256


class PerGroup(NamedTuple):
    values: torch.Tensor  # [G] one loss value per group (or pair), no τ² factor
    exact: torch.Tensor  # [G] bool: the group took the exact shared-vocabulary divergence (hybrid)
    counts: dict  # how many groups took which path


def _dtype(t):
    return torch.promote_types(t.dtype, torch.float32)


def sorted_probs(logits: torch.Tensor, k: int = ULD_TOP_K, temperature: float = 1.0):
    """The k largest probabilities of softmax(z/τ) per row, decreasing [n, min(k, V)], and the rest's mass [n]."""
    z = logits.to(_dtype(logits))
    z = z / temperature if temperature != 1.0 else z
    kk = min(k, z.shape[-1])
    p = (z.topk(kk, dim=-1).values - torch.logsumexp(z, dim=-1, keepdim=True)).exp()
    tail = torch.zeros_like(p[:, 0]) if kk == z.shape[-1] else (1.0 - p.sum(-1)).clamp_min(0.0)
    return p, tail


def sorted_l1(p: torch.Tensor, p_tail: torch.Tensor, q: torch.Tensor, q_tail: torch.Tensor) -> torch.Tensor:
    """ULD_k per row: Σ_i |p_(i) − q_(i)| over the sorted top ranks (the narrower zero-padded) + |P − Q|."""
    w = max(p.shape[-1], q.shape[-1])
    p, q = F.pad(p, (0, w - p.shape[-1])), F.pad(q, (0, w - q.shape[-1]))
    return (p - q).abs().sum(-1) + (p_tail - q_tail).abs()


class LogitTeacher:
    """A frozen teacher's side from its logits [N_t, V_t] (or okd.methods.crosstok.RowLogits) and the token
    each row predicts [N_t]; okd.crosstok.cached.CachedTeacher answers the same from a teacher cache."""

    def __init__(self, logits, labels=None):
        self.logits, self.labels = logits, labels
        self.top_k, self.device = logits.shape[-1], logits.device

    def sorted_probs(self, rows, k, temperature):
        with torch.no_grad():
            return sorted_probs(self.logits.index_select(0, rows), k, temperature)

    def shared_divergence(self, kind, zs, rows, shared, **kw):
        with torch.no_grad():  # (shared.teacher is on this teacher's device: _shared_divergence moved it)
            zt = self.logits.index_select(0, rows).index_select(1, shared.teacher)
        return token_divergence(kind, zs, zt.to(zs.device), **kw)

    def token_logprobs(self, rows, chunk_size):
        with torch.no_grad():
            return token_logprobs(self.logits, self.labels, rows, chunk_size=chunk_size)


def as_teacher(teacher, labels=None):
    """A teacher's side as the losses take it: a LogitTeacher or a CachedTeacher as is, logits wrapped."""
    return teacher if hasattr(teacher, "sorted_probs") else LogitTeacher(teacher, labels)


def uld_loss(student_logits, teacher_logits, student_rows, teacher_rows, *, k: int = ULD_TOP_K,
             temperature: float = 1.0, chunk_size: int = CHUNK_SIZE) -> PerGroup:
    """ULD_k between the student's and the teacher's distributions at paired rows [P] -> PerGroup of [P]
    (k at most the ranks a cached teacher holds: both sides take the same k)."""
    teacher = as_teacher(teacher_logits)
    k = min(k, teacher.top_k)
    student_rows, teacher_rows = student_rows.to(student_logits.device), teacher_rows.to(teacher.device)
    out = []
    for tr, zs in zip(torch.split(teacher_rows, chunk_size), row_chunks(student_logits, student_rows, chunk_size)):
        p, p_tail = teacher.sorted_probs(tr, k, temperature)
        q, q_tail = sorted_probs(zs, k, temperature)
        out.append(sorted_l1(p.to(q.device), p_tail.to(q.device), q, q_tail))
    values = torch.cat(out) if out else student_logits.new_zeros(0, dtype=_dtype(student_logits))
    return PerGroup(values, torch.zeros_like(values, dtype=torch.bool), {"pairs": len(values)})


def span_uld_loss(student_logits, teacher_logits, groups: Groups, **kw) -> PerGroup:
    """Span-aligned ULD: at the rows predicting each group's first token on both sides."""
    return uld_loss(student_logits, teacher_logits, groups.s_first, groups.t_first, **kw)


def _shared_divergence(kind, student_logits, teacher, s_rows, t_rows, shared, chunk_size, **kw):
    shared = SharedVocab(teacher=shared.teacher.to(teacher.device), student=shared.student.to(student_logits.device))
    out = []
    for tr, zs in zip(torch.split(t_rows, chunk_size), row_chunks(student_logits, s_rows, chunk_size)):
        out.append(teacher.shared_divergence(kind, zs.index_select(1, shared.student), tr, shared, **kw))
    return torch.cat(out) if out else student_logits.new_zeros(0, dtype=_dtype(student_logits))


def hybrid_loss(student_logits, teacher_logits, groups: Groups, shared: SharedVocab, student_labels,
                teacher_labels, *, kind: str = "fkl", k: int = ULD_TOP_K, temperature: float = 1.0,
                beta: float = 0.5, alpha: float = 0.1, chunk_size: int = CHUNK_SIZE) -> PerGroup:
    """Exact `kind` divergence over the shared vocabulary at 1-1 shared-token groups, span ULD elsewhere.

    labels: [N] the token each row predicts (student_labels[groups.s_first] is a group's student token).
    """
    teacher = as_teacher(teacher_logits)
    dev, tdev = student_logits.device, teacher.device
    s_first, t_first = groups.s_first.to(dev), groups.t_first.to(dev)
    s2t = torch.full((student_logits.shape[-1],), -1, dtype=torch.long, device=dev)
    s2t[shared.student.to(dev)] = shared.teacher.to(dev)
    exact = groups.one_to_one.to(dev) & (s2t[student_labels.to(dev)[s_first]] == teacher_labels.to(dev)[t_first])
    e, u = torch.nonzero(exact).flatten(), torch.nonzero(~exact).flatten()
    v_e = _shared_divergence(kind, student_logits, teacher, s_first[e], t_first[e].to(tdev), shared,
                             chunk_size, temperature=temperature, beta=beta, alpha=alpha)
    v_u = uld_loss(student_logits, teacher, s_first[u], t_first[u], k=k, temperature=temperature,
                   chunk_size=chunk_size).values
    values = torch.zeros(len(exact), dtype=torch.promote_types(v_e.dtype, v_u.dtype), device=dev)
    values = values.index_copy(0, e, v_e.to(values.dtype)).index_copy(0, u, v_u.to(values.dtype))
    counts = {"groups": len(exact), "exact": len(e), "uld": len(u), "one_to_one": int(groups.one_to_one.sum())}
    return PerGroup(values, exact, counts)


def _log1mexp(x):
    """log(1 − e^x) for x < 0, stable (Mächler 2012); each branch on clamped inputs so no NaN gradient."""
    cut = -math.log(2.0)
    near = torch.log(-torch.expm1(x.clamp_min(cut)))
    far = torch.log1p(-torch.exp(x.clamp_max(cut)))
    return torch.where(x > cut, near, far)


def span_divergence(student_lp: torch.Tensor, teacher_lp: torch.Tensor, how: str = "bkl") -> torch.Tensor:
    """Per-group comparison of span log-probabilities l_S = log P_S(s), l_T = log P_T(s).

    bkl: KL(Bern(P_T) ‖ Bern(P_S)) = P_T (l_T − l_S) + (1 − P_T)(log(1 − P_T) − log(1 − P_S)), the KL
      between "the model writes s here" events: ≥ 0, 0 iff P_S = P_T; its gradient in l_S is
      (P_S − P_T)/(1 − P_S), bounded while P_S < 1 (log-probabilities are clamped to ≤ −1e-12).
    sq: (l_T − l_S)², the squared log-ratio, which weighs long (improbable) spans as much as short ones.
    """
    if how == "sq":
        return (teacher_lp - student_lp).square()
    if how != "bkl":
        raise ValueError(f"unknown span divergence {how!r}; valid: 'bkl', 'sq'")
    lt, ls = teacher_lp.clamp_max(-1e-12), student_lp.clamp_max(-1e-12)
    return lt.exp() * (lt - ls) - torch.expm1(lt) * (_log1mexp(lt) - _log1mexp(ls))


def span_loss(student_logits, teacher_logits, groups: Groups, student_labels, teacher_labels, *,
              how: str = "bkl", chunk_size: int = CHUNK_SIZE) -> PerGroup:
    """span_divergence of every group's chain-rule log-probabilities (teacher detached) -> PerGroup of [G]."""
    g = len(groups.t_first)
    teacher = as_teacher(teacher_logits, teacher_labels)
    lt = span_logprobs(teacher.token_logprobs(groups.t_tokens.to(teacher.device), chunk_size),
                       groups.t_token_group.to(teacher.device), g)
    ls = group_logprobs(student_logits, student_labels, groups.s_tokens, groups.s_token_group, g,
                        chunk_size=chunk_size)
    values = span_divergence(ls, lt.to(ls.device), how)
    return PerGroup(values, torch.zeros_like(values, dtype=torch.bool), {"groups": g})
