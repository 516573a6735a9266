"""Every shipped config parses, and config mistakes name the key."""

from pathlib import Path

import pytest

from okd.config import build_config, load_config
from okd.errors import OkdError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TRAIN_CONFIGS = [p for p in CONFIGS if not p.name.startswith("compare-")]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_train_configs_parse(path):
    cfg = load_config(path)
    assert cfg.method.name


def test_overrides_apply_and_yaml_no_is_a_string():
    cfg = build_config({}, ["train.lr=3e-4", "method.name=rkd", "method.teacher=online",
                            "train.mixed_precision=no", "online.layers=[1, 2]"])
    assert cfg.train.lr == 3e-4 and cfg.train.mixed_precision == "no" and cfg.online.layers == [1, 2]
    assert cfg.method.resolved_divergence == "rkl" and cfg.method.resolved_teacher == "online"


@pytest.mark.parametrize("override, key", [
    ("train.lrr=1", "train.lrr"), ("train.lr=abc", "train.lr"), ("method.name=foo", "method.name"),
    ("online.alpha=2", "online.alpha"), ("nosuch=1", "nosuch"),
])
def test_bad_key_is_named(override, key):
    with pytest.raises(OkdError, match=key.replace(".", r"\.")):
        build_config({}, [override])
