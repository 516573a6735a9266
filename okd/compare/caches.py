"""One teacher cache per (teacher, data) for a grid's frozen-teacher runs (grid key `teacher_cache`).

With `teacher_cache: {top_k: K}` (or `true`) every run whose method can train from a cache
(okd.methods.cached.check_cache_method: fkd, rkd, jsd, tvd, gkd with λ = 0, distillm on ground truth) and
that sets no `teacher.cache` of its own gets `teacher.cache: <output_dir>/teacher-cache/<key>`, shared by
every such run with the same teacher and the same data settings. The cache is built once, just before
the first run that needs it trains (its student exists then, even when it comes from another run), and
reused by the others and by later calls; the report's set-up names it. The trainer checks each run's
tokenizer and features against the manifest, so a run that does not fit the shared cache stops with
the mismatch named rather than training on wrong targets.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from okd.config import Config

# what the cached rows depend on besides the tokenizer (checked at training): the teacher (its whole
# section but the cache itself) and these data keys (okd.models.teacher_cache.describe_config records them)
DATA_KEYS = ("train", "valid", "template", "max_length", "skip_invalid", "train_limit", "valid_limit")


@dataclass
class TeacherCachePlan:
    path: Path
    top_k: int | str
    dtype: str
    runs: list[str] = field(default_factory=list)
    temperatures: set[float] = field(default_factory=set)

    def built(self) -> bool:
        return (self.path / "manifest.json").is_file()

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError):
            return None


def can_use_cache(cfg: Config) -> bool:
    from okd.methods.cached import cache_method_problem

    return bool(cfg.teacher.path) and not cfg.teacher.cache and cache_method_problem(cfg) is None


def cache_key(cfg: Config) -> dict:
    key = {"teacher": cfg.teacher.model_dump(mode="json", exclude={"cache"}),
           "data": {k: getattr(cfg.data, k) for k in DATA_KEYS}}
    if cfg.method.cross_tokenizer != "off":  # a cache on the teacher's tokens, aligned with this student's
        key["cross_tokenizer"] = {"student": cfg.student.path, "teacher_template": cfg.data.teacher_template}
    return key


def assign_teacher_cache(name: str, cfg: Config, spec, out: Path, plans: dict[str, TeacherCachePlan]) -> Config:
    """cfg with teacher.cache set to the grid's shared cache for it (spec: the grid's `teacher_cache`, or
    None), recording the run in `plans` (by cache directory)."""
    if spec is None or not can_use_cache(cfg):
        return cfg
    key = json.dumps(cache_key(cfg), sort_keys=True)
    path = out / "teacher-cache" / f"top{spec.top_k}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    plan = plans.setdefault(str(path), TeacherCachePlan(path=path, top_k=spec.top_k, dtype=spec.dtype))
    plan.runs.append(name)
    plan.temperatures.add(float(cfg.method.temperature))
    cfg = cfg.model_copy(deep=True)
    cfg.teacher.cache = str(path)
    return cfg


def ensure_teacher_cache(plan: TeacherCachePlan, cfg: Config, log) -> None:
    """Build the shared cache with `cfg` (the first run that needs it) unless it is there; a build cut
    short resumes."""
    from okd.train.cache import build_teacher_cache

    if plan.built():
        return
    log(f"teacher cache: top-{plan.top_k} of {cfg.teacher.path} on {cfg.data.train} for "
        f"{', '.join(plan.runs)} -> {plan.path}")
    t0 = time.perf_counter()
    m = build_teacher_cache(cfg, plan.path, top_k=plan.top_k, temperatures=sorted(plan.temperatures),
                            dtype=plan.dtype, progress=False)
    log(f"teacher cache: {m['tokens']} tokens, {m['bytes_per_token']} bytes/token, "
        f"built in {time.perf_counter() - t0:.0f} s")


def describe_caches(plans: list[TeacherCachePlan]) -> list[str]:
    """One line per shared cache (the dry run and the report's set-up)."""
    lines = []
    for p in plans:
        m = p.manifest()
        state = (f"built: {m['tokens']} tokens, {m['bytes_per_token']} bytes/token, {m.get('build_s', '?')} s"
                 if m else "to build before its first run")
        lines.append(f"Teacher cache `{p.path}` (top-{p.top_k}, {p.dtype}; {state}), shared by "
                     f"{', '.join(p.runs)}.")
    return lines
