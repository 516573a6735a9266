"""Methods: one small module each, a composition of data source x loss x teacher mode.

`build_method(cfg, models)` picks the class for `method.name`; `method.teacher: online` turns any
ground-truth divergence method into its online-teacher variant (OKD with that divergence).
"""

from __future__ import annotations

from okd.config import Config
from okd.errors import OkdError
from okd.methods.base import Method, Models
from okd.methods.kd import SFT, FrozenTeacherKD
from okd.methods.okd import OnlineTeacherKD

# Ground-truth methods: the class depends only on the teacher mode.
GROUND_TRUTH = {"fkd", "rkd", "jsd", "tvd", "okd"}


def method_class(cfg: Config) -> type[Method]:
    name, teacher = cfg.method.name, cfg.method.resolved_teacher
    if name == "sft":
        return SFT
    if name in GROUND_TRUTH:
        return OnlineTeacherKD if teacher == "online" else FrozenTeacherKD
    raise OkdError(f"method.name={name!r} is not implemented yet")


def build_method(cfg: Config, models: Models) -> Method:
    return method_class(cfg)(cfg=cfg, models=models)


__all__ = ["Method", "Models", "build_method", "method_class"]
