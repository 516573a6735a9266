"""Methods: one small module each, a composition of data source x loss x teacher mode.

`build_method(cfg, models)` picks the class for `method.name`; `method.teacher: online` turns any
ground-truth divergence method into its online-teacher variant (OKD with that divergence), and the
on-policy divergence methods (imitkd, gkd, distillm) into the same loss on their generated batches.
seqkd and minillm need the frozen teacher (`method_class` says so, before any model is loaded).
"""

from __future__ import annotations

from okd.config import GENERATING_METHODS, Config
from okd.errors import OkdError
from okd.methods.base import Method, Models
from okd.methods.cached import CachedTeacherKD, check_cache_method
from okd.methods.crosstok import CachedCrossTokenizerKD, CrossTokenizerKD, OnlineCrossTokenizerKD
from okd.methods.distillm import DistiLLM
from okd.methods.kd import SFT, FrozenTeacherKD
from okd.methods.minillm import MiniLLM
from okd.methods.okd import OnlineTeacherKD
from okd.methods.onpolicy import GKD, OnPolicyKD
from okd.methods.seqkd import SeqKD

CE_METHODS = {"sft", "seqkd"}  # the methods whose loss may be the cross-entropy (seqkd: on the teacher's answers)
# Ground-truth methods: the class depends only on the teacher mode.
GROUND_TRUTH = {"fkd", "rkd", "jsd", "tvd", "okd"}
# Methods that generate; their class handles both teacher modes unless refused below.
GENERATING = {"seqkd": SeqKD, "imitkd": OnPolicyKD, "gkd": GKD, "distillm": DistiLLM, "minillm": MiniLLM}
assert set(GENERATING) == set(GENERATING_METHODS)  # okd.config keeps the one list


def method_class(cfg: Config) -> type[Method]:
    name, teacher = cfg.method.name, cfg.method.resolved_teacher
    if cfg.method.resolved_divergence == "ce" and name not in CE_METHODS:
        raise OkdError(f"method.divergence=ce is the ground-truth cross-entropy, which {name} does not train on: it "
                       "distils a teacher distribution with fkl, rkl, jsd, tvd, skl or srkl; choose one of them (add "
                       "CE with method.ce_weight), or method.name=sft")
    if cfg.method.cross_tokenizer != "off":  # (okd.config: frozen fkd/rkd/jsd, gkd at λ 0, online okd)
        if cfg.teacher.cache:
            check_cache_method(cfg)
            return CachedCrossTokenizerKD
        return OnlineCrossTokenizerKD if teacher == "online" else CrossTokenizerKD
    if cfg.teacher.cache:  # the frozen teacher's side read from `okd teacher cache` output
        check_cache_method(cfg)
        return CachedTeacherKD
    if name == "sft":
        return SFT
    if name in GROUND_TRUTH:
        return OnlineTeacherKD if teacher == "online" else FrozenTeacherKD
    if name in ("seqkd", "minillm") and teacher == "online":
        why = ("its teacher only writes the training targets, so an online module would never train"
               if name == "seqkd" else "its reward is the teacher's log-probability; it needs a fixed teacher")
        raise OkdError(f"method.teacher=online does not combine with method.name={name}: {why}; "
                       "use method.teacher=frozen (or leave it unset)")
    if name == "minillm" and cfg.method.resolved_divergence != "rkl":
        raise OkdError(f"method.divergence={cfg.method.divergence}: minillm optimises the sequence-level "
                       "reverse KL; leave method.divergence unset (or rkl)")
    if name in GENERATING:
        return GENERATING[name]
    raise OkdError(f"method.name={name!r} is not implemented yet")


def build_method(cfg: Config, models: Models) -> Method:
    return method_class(cfg)(cfg=cfg, models=models)


__all__ = ["Method", "Models", "build_method", "method_class"]
