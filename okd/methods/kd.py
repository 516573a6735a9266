"""Supervised fine-tuning and word-level KD against a frozen teacher (fkd, rkd, jsd, tvd, ...).

sft: CE on the ground-truth response. kd: τ²·D(p, q) (+ optional CE weight) with the divergence D
of `method.divergence`, from one no-grad teacher forward on the same batch. Logits are formed
chunk by chunk from hidden states (okd.losses.chunked_pair_loss), never all at once.
"""

from __future__ import annotations

import torch

from okd.losses import chunked_pair_loss, token_ce, token_divergence
from okd.methods.base import Method, Scored, head, scored_hidden


class SFT(Method):
    name = "sft"

    def losses(self, batch, norm):
        scored = Scored.from_labels(batch["labels"])
        h_s = scored_hidden(self.models.student, batch, scored)
        loss, _ = chunked_pair_loss(
            lambda zs, zt, y: (token_ce(zs, y), None),
            h_s, head(self.models.student, self.models.vocab_size),
            None, None,  # no teacher
            labels=scored.targets, chunk_size=self.cfg.train.loss_chunk_size,
        )
        return {"student": loss / norm}


def student_token_loss(method: Method, zs, zt, y):
    """τ²·D(p, q) + ce_weight·CE, per scored token: the student objective of every KD method."""
    m = method.cfg.method
    loss = method.tau2 * token_divergence(m.resolved_divergence, zs, zt, temperature=m.temperature,
                                          beta=m.beta, alpha=m.alpha)
    if m.ce_weight:
        loss = loss + m.ce_weight * token_ce(zs, y)
    return loss


class FrozenTeacherKD(Method):
    name = "kd"

    def losses(self, batch, norm):
        models = self.models
        scored = Scored.from_labels(batch["labels"])
        with torch.no_grad():  # the frozen teacher needs no autograd graph
            h_t = scored_hidden(models.teacher, batch, scored)
        h_s = scored_hidden(models.student, batch, scored)
        loss, _ = chunked_pair_loss(
            lambda zs, zt, y: (student_token_loss(self, zs, zt, y), None),
            h_s, head(models.student, models.vocab_size),
            h_t, head(models.teacher, models.vocab_size).detach(),
            labels=scored.targets, chunk_size=self.cfg.train.loss_chunk_size,
        )
        return {"student": loss / norm}
