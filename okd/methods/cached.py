"""Frozen-teacher KD from a teacher cache (`teacher.cache: DIR`), without loading the teacher.

The student loss is FrozenTeacherKD's, τ²·D(p, q) + ce_weight·CE, with the teacher's side read from the
cache rows of the batch's examples (`batch["example_index"]`) and D taken over the cache's top-k + tail
buckets (okd.losses.topk; exact at k = V). `check_cache_method` says which methods can train this way.
"""

from __future__ import annotations

from dataclasses import dataclass

from okd.config import Config
from okd.errors import OkdError
from okd.methods.base import Method, Scored, head, scored_hidden
from okd.losses.topk import sparse_kd_loss, sparse_teacher

# Methods that need the live teacher, and why (check_cache_method).
NEEDS_LIVE_TEACHER = {
    "okd": "its online module changes the teacher every step",
    "seqkd": "its teacher generates the training targets",
    "imitkd": "its teacher scores the student's own samples, which are new every step",
    "minillm": "its teacher scores the student's own samples, which are new every step",
}


def cache_method_problem(cfg: Config) -> str | None:
    """Why cfg's method cannot train from a teacher cache, or None if it can."""
    m = cfg.method
    why = NEEDS_LIVE_TEACHER.get(m.name)
    if m.name == "sft":
        why = "sft trains without a teacher"
    elif m.resolved_teacher == "online" and not why:
        why = "an online teacher (method.teacher=online) changes every step"
    elif m.name == "gkd" and m.lmbda > 0:
        why = f"with method.lmbda={m.lmbda} its teacher scores student samples; only method.lmbda=0 trains on the ground truth"
    elif m.name == "distillm" and _distillm_may_generate(cfg):
        why = ("it may switch to student samples (method.replay_init_prob > 0, or a probability that rises with "
               "data.valid, train.eval_every, method.replay_step and method.replay_max_prob > 0)")
    return why


def check_cache_method(cfg: Config) -> None:
    """OkdError (one line) if `teacher.cache` is set for a method that needs the live teacher."""
    if cfg.teacher.cache and (why := cache_method_problem(cfg)):
        raise OkdError(f"teacher.cache does not combine with method.name={cfg.method.name}: {why}; unset "
                       "teacher.cache (or use fkd, rkd, jsd, tvd, gkd with lmbda=0, distillm on ground truth)")


def _distillm_may_generate(cfg: Config) -> bool:
    m = cfg.method
    rises = bool(cfg.data.valid) and cfg.train.eval_every > 0 and m.replay_step > 0 and m.replay_max_prob > 0
    return m.replay_init_prob > 0 or rises


def batch_cache_rows(cache, batch, names, scored_rows: int) -> dict:
    """TeacherCache.rows of the batch's examples (`batch["example_index"]`), which must hold one row per
    scored token of the batch (the student's, or the teacher's across tokenizers)."""
    if "example_index" not in batch:
        raise OkdError("teacher.cache needs each training example's index in its batch (batch['example_index'])")
    rows = cache.rows("train", batch["example_index"], names)
    if rows[names[0]].shape[0] != scored_rows:
        raise OkdError(f"teacher cache {cache.directory} holds {rows[names[0]].shape[0]} scored tokens for this batch, "
                       f"the batch has {scored_rows}: it was built on other data; rebuild it")
    return rows


@dataclass(eq=False)
class CachedTeacherKD(Method):
    """fkd / rkd / jsd / tvd / distillm (ground truth) / gkd (λ = 0) with the teacher read from the cache."""

    name = "kd-cached"

    def __post_init__(self):
        cache = getattr(self.models, "teacher_cache", None)
        if cache is None:
            raise OkdError("teacher.cache is set but no cache was opened; open it with "
                           "okd.models.teacher_cache.open_cache")
        if cache.vocab_size != self.models.vocab_size:
            raise OkdError(f"teacher cache {cache.directory} has a {cache.vocab_size}-token vocabulary, the "
                           f"student {self.models.vocab_size}; rebuild it with the run's tokenizer")
        self.cache = cache

    def losses(self, batch, norm):
        m, models = self.cfg.method, self.models
        scored = Scored.of(batch)
        rows = batch_cache_rows(self.cache, batch, ("ids", "logp", "log_tail"), scored.targets.shape[0])
        ids, logp, log_tail = rows["ids"], rows["logp"], rows["log_tail"]
        device = scored.targets.device
        teacher = sparse_teacher(ids.to(device), logp.to(device), log_tail.to(device), vocab_size=models.vocab_size,
                                 temperatures=self.cache.tail_temperatures, temperature=m.temperature)
        h_s = scored_hidden(models.student, batch, scored)
        loss = sparse_kd_loss(m.resolved_divergence, h_s, head(models.student, models.vocab_size), teacher,
                              scored.targets, temperature=m.temperature, scale=self.tau2, ce_weight=m.ce_weight,
                              beta=m.beta, alpha=m.alpha, chunk_size=self.cfg.train.loss_chunk_size)
        return {"student": loss / norm}
