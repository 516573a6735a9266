"""Closed-form losses and logit gradients for the common KD objectives (no autograd).

Autograd through log_softmax, the KL sums and cross entropy makes ~3x more passes over a
[chunk, V] tensor than the analytic gradients need, and on a 49k vocabulary these passes cost as
much as the output-layer matmuls (benchmarks/bench_losses.py --closed-form). With p = softmax(z_T/τ),
q = softmax(z_S/τ), s = softmax(z) at τ = 1 and e_y the one-hot label:
  ∂/∂z_S KL(p‖q) = (q − p)/τ                   ∂/∂z_T KL(q‖p) = (p − q)/τ
  ∂/∂z_S KL(q‖p) = q ∘ (log q − log p − KL(q‖p))/τ
  ∂/∂z_S JSD_β   = (1−β)·q ∘ (log q − log m − KL(q‖m))/τ,   m = β·p + (1−β)·q
      (∂JSD_β/∂q = (1−β)·log(q/m): the terms through m cancel; then the softmax Jacobian as for KL(q‖p))
  ∂/∂z CE(z, y)  = s − e_y                      (0 for ignored labels)
Each is checked against autograd of token_divergence / token_ce in tests/test_losses.py.
"""

import torch
import torch.nn.functional as F

from okd.config import DIVERGENCES, MODULE_KL_WEIGHTS
from okd.losses.chunked import CHUNK_SIZE, chunked_pair_loss
from okd.losses.divergence import _check_weight, _compute_dtype, _log_mix, token_divergence
from okd.losses.protocol import ClosedFormLoss


def module_kl_weight(ce_teacher):
    """w = 1 − p_T(y) per token from the teacher's CE on the label (τ = 1; a CE of 0 where there is no
    label gives w = 0 there): the weight of KL(q‖p′) in OKD's module loss with online.kl_weight
    "teacher_miss" (a constant: no gradient flows through it)."""
    return 1.0 - torch.exp(-ce_teacher.detach())


class KDClosedForm(ClosedFormLoss):
    """Per-token KD losses with their logit gradients, for chunked_pair_loss (no autograd).

    Student loss:       scale·D(p, q) + ce_weight·CE(z_S, y),  D = KL(p‖q) ("fkl"), KL(q‖p) ("rkl") or
                        JSD_β ("jsd": β·KL(p‖m) + (1−β)·KL(q‖m); β = 0 / 1 are fkl / rkl, as token_divergence)
    Teacher loss (with module_alpha set, the OKD online module):
                        module_alpha·module_scale·w·KL(q‖p) + (1 − module_alpha)·CE(z_T, y)
                        w = 1 (module_kl_weight "uniform", the paper) or w = 1 − p_T(y) at τ = 1, a
                        constant ("teacher_miss": the teacher's probability of missing the label)
    `with_grads(zs, zt, y, need=(student_grad, teacher_grad))` returns (student_per_token,
    teacher_per_token | None, d student_sum/d zs | None, d teacher_sum/d zt | None).
    """

    KINDS = ("fkl", "rkl", "jsd")

    def __init__(self, kind="fkl", *, temperature=1.0, scale=1.0, ce_weight=0.0, beta=0.5, module_alpha=None,
                 module_scale=1.0, module_kl_weight="uniform", ignore_index=-100):
        if kind not in self.KINDS:
            raise ValueError(f"closed form covers {', '.join(self.KINDS)}, not {kind!r}")
        _check_weight("beta", beta)
        if kind == "jsd" and beta in (0.0, 1.0):  # the endpoints are exactly fkl and rkl (token_divergence)
            kind = "fkl" if beta == 0.0 else "rkl"
        self.beta = float(beta)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if module_alpha is not None:
            _check_weight("module_alpha", module_alpha)
        self.kind, self.tau, self.scale, self.ce_weight = kind, float(temperature), scale, ce_weight
        if module_kl_weight not in MODULE_KL_WEIGHTS:
            raise ValueError(f"module_kl_weight must be one of {', '.join(MODULE_KL_WEIGHTS)}, got {module_kl_weight!r}")
        self.module_alpha, self.module_scale, self.ignore_index = module_alpha, module_scale, ignore_index
        self.module_kl_weight = module_kl_weight

    def _ce(self, log_s, y):
        """CE per token from log_softmax(z) (τ = 1), and the kept-label mask and safe indices."""
        keep = y != self.ignore_index
        safe_y = torch.where(keep, y, 0)
        ce = -log_s.gather(-1, safe_y[:, None]).squeeze(-1) * keep
        return ce, keep, safe_y

    def _sub_onehot(self, g, weight, keep, safe_y):
        """g[t, y_t] -= weight for kept tokens (in place)."""
        g.scatter_add_(-1, safe_y[:, None], (-weight * keep.to(g.dtype))[:, None])

    def with_grads(self, zs, zt, y, need=(True, True)):
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
        jsd = self.kind == "jsd"
        if jsd:  # log m as token_divergence forms it (logaddexp), then the two log-ratios to m
            b = self.beta
            log_m = _log_mix(b, log_p, log_q)
            d_pm, d_qm = log_p - log_m, log_q - log_m  # log p − log m, log q − log m
            del log_m
        d = log_p - log_q if (not jsd or module) else None  # log p − log q
        q, p = log_q.exp_(), log_p.exp_()  # in place: the log-probabilities are not needed any more
        # at τ = 1 the CE softmaxes are q and p themselves (their buffers were exponentiated above)
        soft_s = None if not self.ce_weight else (q if tau == 1.0 else log_s_student.exp_())
        soft_t = None if not module else (p if tau == 1.0 else log_s_teacher.exp_())

        def masked_sum(a, d):  # Σ a·d over the vocabulary with 0·log 0 = 0 (mask before summing)
            t = a * d
            return t.masked_fill_(a == 0, 0.0).sum(-1)

        kl_q_p = -masked_sum(q, d) if (self.kind == "rkl" or module) else None
        c = self.scale / tau
        g_s = g_t = None
        if self.kind == "fkl":
            s_loss = self.scale * masked_sum(p, d)
        elif self.kind == "rkl":
            s_loss = self.scale * kl_q_p
        else:
            kl_q_m = masked_sum(q, d_qm)
            s_loss = self.scale * (b * masked_sum(p, d_pm) + (1.0 - b) * kl_q_m)
            del d_pm
            if want_s:  # (1−β)·q ∘ (log q − log m − KL(q‖m)) / τ, in d_qm's buffer
                g_s = d_qm.sub_(kl_q_m[:, None]).mul_(q).masked_fill_(q == 0, 0.0).mul_(c * (1.0 - b))
            del d_qm
        if want_s and self.kind == "rkl":  # q ∘ (log q − log p − KL(q‖p)) / τ
            g_s = (d + kl_q_p[:, None]).mul_(q).masked_fill_(q == 0, 0.0).mul_(-c)
        del d
        w = module_kl_weight(ce_t[0]) if module and self.module_kl_weight == "teacher_miss" else None
        if module and want_t:  # α·m·w·(p − q)/τ + (1 − α)(softmax(z_T) − e_y)
            a, m = self.module_alpha, self.module_scale
            g_t = (p - q).mul_(a * m / tau)
            if w is not None:
                g_t.mul_(w[:, None].to(dtype))
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
            kl_term = kl_q_p if w is None else w * kl_q_p
            t_loss = self.module_alpha * self.module_scale * kl_term + (1.0 - self.module_alpha) * ce_t[0]
        return s_loss, t_loss, g_s, g_t


def chunked_kd_loss(kind, student_hidden, student_weight, teacher, teacher_weight=None, *, temperature=1.0,
                    beta=0.5, alpha=0.1, chunk_size=CHUNK_SIZE):
    """Σ over tokens of token_divergence(kind, ...) from hidden states, chunked (no τ² factor)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid kinds: {', '.join(DIVERGENCES)}")

    if kind in KDClosedForm.KINDS:
        fn = KDClosedForm(kind, temperature=temperature, beta=beta)
    else:
        def fn(zs, zt, _labels):
            return token_divergence(kind, zs, zt, temperature=temperature, beta=beta, alpha=alpha), None

    s, _ = chunked_pair_loss(fn, student_hidden, student_weight, teacher, teacher_weight, chunk_size=chunk_size)
    return s
