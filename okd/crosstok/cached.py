"""A frozen teacher's side of the cross-tokenizer losses read from a teacher cache, without the teacher.

okd.crosstok.losses asks a teacher's side three things, rows numbered as its scored tokens (a row
predicts labels[row]), always without autograd: `sorted_probs(rows, k, τ)` (ULD), `shared_divergence
(kind, zs, rows, shared, …)` (the hybrid's exact part: the student's rows over the shared vocabulary M
against the teacher's distribution renormalised over M) and `token_logprobs(rows)` (a span's chain
rule). losses.LogitTeacher answers from logits; `CachedTeacher` from a cache built on the teacher's own
tokens (okd.models.teacher_cache, its cross-tokenizer arrays; okd.train.cache builds it):
  - token_logprobs: the stored log p of the label, exact;
  - sorted_probs: the stored top-k at τ (a tempered top-k stays sorted) and the stored tail mass, so ULD
    at the cache's k is exactly the live teacher's ULD_k (uld_loss takes k = min(k, top_k));
  - shared_divergence: the stored top-k of the distribution renormalised over M plus the rest of M as
    one bucket (okd.losses.topk's estimator over the "vocabulary" M): a lower bound of the exact
    divergence (data processing), equal to it when the cache holds all of M (k ≥ |M|, `--top-k all`).
"""

from __future__ import annotations

import torch

from okd.losses.topk import sparse_teacher, sparse_token_divergence


class CachedTeacher:
    """The teacher's side from the cache rows of a batch (TeacherCache.rows with the cross-tokenizer
    arrays), at the temperatures the cache stored."""

    NAMES = ("ids", "logp", "log_tail", "label_logp", "shared_ids", "shared_logp", "shared_log_tail")

    def __init__(self, rows: dict, *, vocab_size: int, shared_size: int, temperatures, device=None):
        self.rows = {k: v.to(device) for k, v in rows.items()} if device is not None else rows
        self.vocab_size, self.shared_size, self.temperatures = vocab_size, shared_size, list(temperatures)
        self.top_k, self.device = self.rows["ids"].shape[-1], self.rows["ids"].device
        self._at: dict = {}

    def _buckets(self, prefix: str, tau: float):
        """SparseTeacher of the full (prefix '') or shared (prefix 'shared_') distribution at τ, made once."""
        key = (prefix, float(tau))
        if key not in self._at:
            r = self.rows
            self._at[key] = sparse_teacher(r[prefix + "ids"], r[prefix + "logp"], r[prefix + "log_tail"],
                                           vocab_size=self.vocab_size if not prefix else self.shared_size,
                                           temperatures=self.temperatures, temperature=tau)
        return self._at[key]

    def sorted_probs(self, rows, k, temperature):
        t = self._buckets("", temperature)
        b = t.log_buckets.index_select(0, rows).exp()
        kk = min(k, self.top_k)
        tail = b[:, self.top_k] if t.has_tail else torch.zeros_like(b[:, 0])
        if kk < self.top_k:  # fewer ranks asked for than stored: the others join the tail
            tail = tail + b[:, kk:self.top_k].sum(-1)
        return b[:, :kk], tail

    def shared_divergence(self, kind, zs, rows, shared, *, temperature=1.0, beta=0.5, alpha=0.1):
        t = self._buckets("shared_", temperature)
        return sparse_token_divergence(kind, zs, t.ids.index_select(0, rows), t.log_buckets.index_select(0, rows),
                                       t.has_tail, temperature=temperature, beta=beta, alpha=alpha)

    def token_logprobs(self, rows, chunk_size):
        return self.rows["label_logp"].index_select(0, rows)
