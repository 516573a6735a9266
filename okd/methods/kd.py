"""Supervised fine-tuning and word-level KD against a frozen teacher (fkd, rkd, jsd, tvd, ...).

sft: CE on the ground-truth response. kd: τ²·D(p, q) (+ optional CE weight) with the divergence D
of `method.divergence`, from one no-grad teacher forward on the same batch. Logits are formed
chunk by chunk from hidden states (okd.losses.chunked_pair_loss), never all at once.
"""

from __future__ import annotations

import torch

from okd.losses import KDClosedForm, chunked_pair_loss, token_ce, token_divergence
from okd.methods.base import Method, Scored, ce_sum, head, scored_hidden


class SFT(Method):
    name = "sft"

    def losses(self, batch, norm):
        loss, _ = ce_sum(self.models.student, batch, self.models.vocab_size, self.cfg.train.loss_chunk_size)
        return {"student": loss / norm}


def student_token_loss(method: Method, zs, zt, y):
    """τ²·D(p, q) + ce_weight·CE, per scored token: the student objective of every KD method."""
    m = method.cfg.method
    loss = method.tau2 * token_divergence(m.resolved_divergence, zs, zt, temperature=m.temperature,
                                          beta=m.beta, alpha=m.alpha)
    if m.ce_weight:
        loss = loss + m.ce_weight * token_ce(zs, y)
    return loss


def closed_form_loss(method: Method, module_alpha=None, module_kl_weight="uniform"):
    """The same objective (and, with module_alpha, OKD's module loss) with analytic logit gradients,
    or None where the divergence has no closed form here (then autograd of student_token_loss)."""
    m = method.cfg.method
    kind = m.resolved_divergence
    if kind not in KDClosedForm.KINDS:
        return None
    return KDClosedForm(kind, temperature=m.temperature, scale=method.tau2, ce_weight=m.ce_weight, beta=m.beta,
                        module_alpha=module_alpha, module_scale=method.tau2, module_kl_weight=module_kl_weight)


class FrozenTeacherKD(Method):
    name = "kd"

    def losses(self, batch, norm):
        models = self.models
        scored = Scored.of(batch)
        with torch.no_grad():  # the frozen teacher needs no autograd graph
            h_t = scored_hidden(models.teacher, batch, scored)
        h_s = scored_hidden(models.student, batch, scored)
        loss, _ = chunked_pair_loss(
            closed_form_loss(self) or (lambda zs, zt, y: (student_token_loss(self, zs, zt, y), None)),
            h_s, head(models.student, models.vocab_size),
            h_t, head(models.teacher, models.vocab_size).detach(),
            labels=scored.targets, chunk_size=self.cfg.train.loss_chunk_size,
        )
        return {"student": loss / norm}
