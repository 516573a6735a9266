"""Word-level KD across tokenizers (method.cross_tokenizer): fkd, rkd, jsd, gkd (λ 0) with a frozen teacher, and
okd's online teacher (OnlineCrossTokenizerKD).

The batch (okd.crosstok.data.CrossCollator) holds both sides' padded batches and the groups of tokens
covering the same bytes; the teacher runs (no grad) on its own tokens, the student on its own. The loss
over groups (okd.crosstok): `hybrid` (the exact `method.divergence` over the shared vocabulary at 1-1
shared-token groups, span-aligned ULD elsewhere), `uld` (span-aligned ULD at every group) or `span`
(chain-rule span likelihoods, Bernoulli KL). τ²·Σ_groups / norm, norm = the student's scored tokens as
for every okd loss, plus method.ce_weight·CE on all the student's scored tokens.

Memory: only hidden states of the scored rows are kept; the library's loss functions read logits
through `RowLogits`, which forms `hidden[rows] @ head.T` for the rows asked for. The losses ask the
teacher for one chunk of rows at a time under no_grad (train.loss_chunk_size rows of V_t at most:
the teacher's [N_t, V_t] logits never exist); the student's selected rows are one product, as the
library's autograd path needs ([rows, V_s], rows = the groups' rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from okd.crosstok import Groups, SharedVocab, hybrid_loss, span_loss, span_uld_loss
from okd.crosstok.data import groups_of, pair_vocab
from okd.errors import OkdError
from okd.methods.base import Method, Scored, ce_of_hidden, head, scored_hidden


class RowLogits:
    """Logits [N, V] = hidden @ weight.T, formed only for the rows index_select(0, rows) asks for."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor):
        self.hidden, self.weight = hidden, weight

    @property
    def shape(self):
        return torch.Size((self.hidden.shape[0], self.weight.shape[0]))

    @property
    def device(self):
        return self.hidden.device

    @property
    def dtype(self):
        return self.hidden.dtype

    @property
    def requires_grad(self) -> bool:
        return self.hidden.requires_grad or self.weight.requires_grad

    def index_select(self, dim: int, rows: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("RowLogits selects rows only")
        return F.linear(self.hidden.index_select(0, rows.to(self.hidden.device)), self.weight)

    def new_zeros(self, *size, **kw):
        return self.hidden.new_zeros(*size, **kw)


class CrossTokenizerKD(Method):
    name = "crosstok"
    shared = None  # okd.crosstok.SharedVocab of the model pair (attach_teacher_tokenizer)
    teacher_vocab_size = None

    def attach_teacher_tokenizer(self, teacher_tokenizer) -> None:
        """Called once by setup: the teacher's vocabulary size and the shared vocabulary (hybrid)."""
        self.teacher_vocab_size = len(teacher_tokenizer)
        if self.cfg.method.cross_tokenizer == "hybrid":
            self.shared = pair_vocab(teacher_tokenizer, self.models.tokenizer)

    def group_values(self, zs, zt, groups, s_labels, t_labels, *, shared=None, kind=None) -> torch.Tensor:
        """One loss value per group of the model in the student's slot (zs) toward the one in the
        teacher's slot (zt, read under no_grad); `shared`/`kind` default to the pair's and the method's."""
        m, chunk = self.cfg.method, self.cfg.train.loss_chunk_size
        if m.cross_tokenizer == "hybrid":
            per = hybrid_loss(zs, zt, groups, shared or self.shared, s_labels, t_labels,
                              kind=kind or m.resolved_divergence,
                              temperature=m.temperature, beta=m.beta, alpha=m.alpha, chunk_size=chunk)
            self.metrics["xtok_exact_groups"] = per.counts["exact"]
            self.metrics["xtok_uld_groups"] = per.counts["uld"]
        elif m.cross_tokenizer == "uld":
            per = span_uld_loss(zs, zt, groups, temperature=m.temperature, chunk_size=chunk)
        else:
            per = span_loss(zs, zt, groups, s_labels, t_labels, chunk_size=chunk)
        return per.values

    def teacher_side(self, batch, t_scored):
        """The frozen teacher's logits of its scored rows, on its own tokens (as RowLogits)."""
        with torch.no_grad():
            h_t = scored_hidden(self.models.teacher, batch, t_scored, side="teacher_")
        return RowLogits(h_t, head(self.models.teacher, self.teacher_vocab_size).detach())

    def losses(self, batch, norm):
        models, m = self.models, self.cfg.method
        scored = Scored.of(batch)
        t_scored = Scored.from_labels(batch["teacher_labels"], batch.get("teacher_scored_index"))
        zt = self.teacher_side(batch, t_scored)
        h_s = scored_hidden(models.student, batch, scored)
        w_s = head(models.student, models.vocab_size)
        values = self.group_values(RowLogits(h_s, w_s), zt, groups_of(batch), scored.targets, t_scored.targets)
        loss = self.tau2 * values.sum()
        if m.ce_weight:
            loss = loss + m.ce_weight * ce_of_hidden(h_s, w_s, scored.targets, self.cfg.train.loss_chunk_size)
        return {"student": loss / norm}


class CachedCrossTokenizerKD(CrossTokenizerKD):
    """CrossTokenizerKD with the teacher's side read from a cache built on the teacher's own tokens
    (teacher.cache; okd.crosstok.cached): no teacher model is loaded. At the cache's top-k, ULD and the
    span term equal the live teacher's; the hybrid's exact part is the top-k + rest-of-M bucket bound,
    exact when the cache holds all of the shared vocabulary (`--top-k all`)."""

    name = "crosstok-cached"

    def teacher_side(self, batch, t_scored):
        from okd.crosstok.cached import CachedTeacher
        from okd.methods.cached import batch_cache_rows

        cache = self.models.teacher_cache
        rows = batch_cache_rows(cache, batch, CachedTeacher.NAMES, t_scored.targets.shape[0])
        return CachedTeacher(rows, vocab_size=cache.vocab_size, shared_size=cache.manifest["shared_vocab"]["size"],
                             temperatures=cache.tail_temperatures, device=t_scored.targets.device)


def swapped(groups: Groups) -> Groups:
    """The same groups seen from the other side (teacher fields <-> student fields)."""
    g = groups._asdict()
    other = {k: ("s_" + k[2:] if k.startswith("t_") else "t_" + k[2:] if k.startswith("s_") else k) for k in g}
    return Groups(**{k: g[other[k]] for k in g})


@dataclass(eq=False)
class OnlineCrossTokenizerKD(CrossTokenizerKD):
    """okd across tokenizers: the online module (LoRA in the teacher) trains through the aligned groups.

    As okd.methods.okd, with the groups in place of the positions (p′ the online teacher on its own
    tokens, q the student on its own):
        module   L_t = α·τ²·Σ_groups D×(q ‖ p′) + (1−α)·CE_teacher(its tokens)     (q detached)
        student  L_s = τ²·Σ_groups D×(p′ ‖ q) [+ ce_weight·CE]                    (p′ detached)
    D× is the cross-tokenizer loss of method.cross_tokenizer: the student's loss computed the other way
    round (the groups and the shared vocabulary swapped), so the module's hybrid term is KL(q ‖ p′) over
    the shared vocabulary at 1-1 groups (okd's module divergence) and ULD elsewhere, ULD is symmetric, and
    the span term compares the teacher's span likelihoods with the student's. Both sums are over the
    same groups and divided by the student's scored tokens (the teacher's CE by them too, as okd does)."""

    name = "okd-crosstok"

    def __post_init__(self):
        if self.cfg.online.kl_weight != "uniform":
            raise OkdError(f"online.kl_weight={self.cfg.online.kl_weight} weights each token by the teacher's miss; "
                           "across tokenizers the module's loss is over aligned groups: use online.kl_weight=uniform")

    def losses(self, batch, norm):
        models, m, on = self.models, self.cfg.method, self.cfg.online
        chunk = self.cfg.train.loss_chunk_size
        scored = Scored.of(batch)
        t_scored = Scored.from_labels(batch["teacher_labels"], batch.get("teacher_scored_index"))
        h_t = scored_hidden(models.teacher, batch, t_scored, side="teacher_")  # with autograd: the module trains
        h_s = scored_hidden(models.student, batch, scored)
        w_s, w_t = head(models.student, models.vocab_size), head(models.teacher, self.teacher_vocab_size)
        groups = groups_of(batch)
        student = self.group_values(RowLogits(h_s, w_s), RowLogits(h_t.detach(), w_t.detach()), groups,
                                    scored.targets, t_scored.targets)
        shared = None if self.shared is None else SharedVocab(teacher=self.shared.student, student=self.shared.teacher)
        module = self.group_values(RowLogits(h_t, w_t), RowLogits(h_s.detach(), w_s.detach()), swapped(groups),
                                   t_scored.targets, scored.targets, shared=shared, kind="fkl")
        loss_s = self.tau2 * student.sum()
        if m.ce_weight:
            loss_s = loss_s + m.ce_weight * ce_of_hidden(h_s, w_s, scored.targets, chunk)
        loss_t = on.alpha * self.tau2 * module.sum() + (1.0 - on.alpha) * ce_of_hidden(h_t, w_t, t_scored.targets, chunk)
        return {"online": loss_t / norm, "student": loss_s / norm}
