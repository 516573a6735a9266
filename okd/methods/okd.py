"""Online Knowledge Distillation (arXiv 2409.12512, Algorithm 1): the whole step, in one place.

The teacher is frozen except for a small LoRA "online module" (okd.models.online). Each step, on a
ground-truth batch (no generation):

  1. one forward of the teacher with the module, giving p′ = softmax(z_T′/τ), and one forward of
     the student, giving q = softmax(z_S/τ);
  2. online-module loss   L_t = α·τ²·KL(q ‖ p′) + (1−α)·CE_teacher(y)     (q detached; beyond the
     paper, online.kl_weight teacher_miss weights each token's KL by 1 − p′(y), detached)
     student loss         L_s = τ²·D(p′, q), D = KL(p′ ‖ q) by default     (p′ detached)
     The KL(q‖p′) term pulls the teacher toward what the student can represent; the CE term keeps
     it anchored to the data. D is `method.divergence`, so "rkl/jsd + online teacher" (the paper's
     Table V) is configuration;
  3. the trainer steps the module's optimizer, then the student's (each has its own AdamW and
     schedule), after one backward of L_t + L_s.

Both losses come from the same two forwards: `chunked_pair_loss` evaluates them chunk by chunk over
the scored tokens and routes each gradient to its own side only, which is what "detached" means
above. The two graphs share nothing, so one backward of the sum equals two separate backwards.
For D = fkl/rkl/jsd both losses and their logit gradients come in closed form from one log-softmax per
model (okd.losses.KDClosedForm; `module_token_loss` below is the same formula through autograd,
used for the other divergences and as the reference in the tests).
"""

from __future__ import annotations

import torch

from okd.losses import chunked_pair_loss, token_ce, token_divergence
from okd.losses.closed_form import module_kl_weight
from okd.methods.base import Method, Scored, head, scored_hidden
from okd.methods.kd import closed_form_loss, student_token_loss
from okd.models.loading import output_weight
from okd.models.online import base_teacher, update_norm


class OnlineTeacherKD(Method):
    name = "okd"

    def module_token_loss(self, zs, zt, y):
        """L_t per token: α·τ²·w·KL(q‖p′) + (1−α)·CE(teacher, y); q and w are treated as constants
        (w = 1, or 1 − p′(y) with online.kl_weight teacher_miss)."""
        m, on = self.cfg.method, self.cfg.online
        kl_q_p = token_divergence("rkl", zs, zt, temperature=m.temperature)  # rkl(q, p′) = KL(q‖p′)
        ce = token_ce(zt, y)
        if on.kl_weight == "teacher_miss":
            kl_q_p = module_kl_weight(ce) * kl_q_p
        return on.alpha * self.tau2 * kl_q_p + (1.0 - on.alpha) * ce

    def losses(self, batch, norm):
        models = self.models
        scored = Scored.of(batch)
        h_t = scored_hidden(models.teacher, batch, scored)  # with autograd: the module trains
        h_s = scored_hidden(models.student, batch, scored)
        loss_s, loss_t = chunked_pair_loss(
            closed_form_loss(self, module_alpha=self.cfg.online.alpha, module_kl_weight=self.cfg.online.kl_weight)
            or (lambda zs, zt, y: (student_token_loss(self, zs, zt, y), self.module_token_loss(zs, zt, y))),
            h_s, head(models.student, models.vocab_size),
            h_t, head(models.teacher, models.vocab_size),
            labels=scored.targets, chunk_size=self.cfg.train.loss_chunk_size,
        )
        return {"online": loss_t / norm, "student": loss_s / norm}

    # ------------------------------------------------------------------ module dynamics (DESIGN.md §6)

    @torch.no_grad()
    def validation_sums(self, batch, student_logits):
        """Sums over the scored tokens, at τ = 1: KL(p‖q) toward the frozen base teacher (adapter
        disabled) and KL(p′‖q) toward the online teacher — the gap the module exists to close — and
        both teachers' CE on the reference response (does the teacher drift away from the data?).
        The student's side is the validation's own forward (`student_logits` [B, T, V'])."""
        models, chunk = self.models, self.cfg.train.loss_chunk_size
        scored = Scored.of(batch)
        z_s = scored.select(student_logits)[:, :models.vocab_size]
        h_on = scored_hidden(models.teacher, batch, scored)
        with base_teacher(models.teacher):
            h_base = scored_hidden(models.teacher, batch, scored)
        sums = {k: torch.zeros((), dtype=torch.float64, device=z_s.device) for k in
                ("valid_kl_base_teacher", "valid_kl_online_teacher", "valid_ce_base_teacher", "valid_ce_online_teacher")}
        with models.gathered([output_weight(models.teacher)]):
            self._dynamics_sums(sums, z_s, h_base, h_on, head(models.teacher, models.vocab_size), scored.targets, chunk)
        return sums

    @staticmethod
    def _dynamics_sums(sums, z_s, h_base, h_on, w_t, targets, chunk):
        for i in range(0, z_s.shape[0], chunk):
            y, zs = targets[i:i + chunk], z_s[i:i + chunk]
            for name, h in (("base", h_base), ("online", h_on)):
                zt = h[i:i + chunk] @ w_t.T
                sums[f"valid_kl_{name}_teacher"] += token_divergence("fkl", zs, zt).sum().double()
                sums[f"valid_ce_{name}_teacher"] += token_ce(zt, y).sum().double()

    def validation_extras(self):
        teacher = self.models.teacher
        with self.models.gathered([p for p in teacher.parameters() if p.requires_grad]):
            return {"online_update_norm": update_norm(teacher)}
