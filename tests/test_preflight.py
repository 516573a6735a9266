"""`okd.train.preflight`: what is checked before any model loads (issue 18, docs/errors.md).

Each case calls `preflight(cfg)` directly; the same cases run through `okd train` once the trainer
calls preflight first (skipped until then). Warnings are for settings that do nothing.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest

from okd.config import build_config
from okd.errors import OkdError
from okd.train.preflight import check_output_dir, check_output_file, data_warnings, preflight


def _hooked() -> bool:
    """Whether `okd train` calls preflight (in the trainer, its set-up, or a wrapper of okd.train.train)."""
    import importlib

    import okd.train

    sources = [inspect.getsource(okd.train.train)]
    for name in ("okd.train.trainer", "okd.train.setup"):
        try:
            sources.append(inspect.getsource(importlib.import_module(name)))
        except ImportError:
            pass
    return any("preflight(" in s for s in sources)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    from okd.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("preflight")
    return {
        **tiny_dirs,
        # gpt2 (no padding index) with fewer embedding rows than the byte tokenizer's 260 tokens
        "small_vocab": save_tiny(root / "small_vocab", "gpt2", layers=1, hidden=32, seed=5, vocab_size=200),
        "short_context": save_tiny(root / "short_context", "gpt2", layers=1, hidden=32, seed=6, max_positions=64),
        "root": root,
    }


def base(m, data, tmp_path) -> list[str]:
    return [f"teacher.path={m['teacher']}", f"student.path={m['student']}", f"data.train={data}",
            "data.max_length=128", "train.batch_size=4", "train.max_steps=1", f"output_dir={tmp_path / 'run'}"]


# (id, extra overrides builder (models, tmp_path), pattern)
CASES = [
    ("student-vocab-too-small", lambda m, t: ["method.name=sft", f"student.path={m['small_vocab']}"],
     r"the student's embedding \(vocab_size in its config\) has 200 rows but its tokenizer has 260 tokens; ids "
     r"200\.\.259 would be out of range"),
    ("context-shorter-than-max-length", lambda m, t: ["method.name=sft", f"student.path={m['short_context']}"],
     r"data\.max_length=128 needs 128 positions but the student's context is 64 tokens \(max_position_embeddings "
     r"in its config\); lower data\.max_length to at most 64"),
    ("context-shorter-than-generation", lambda m, t: ["method.name=gkd", f"student.path={m['short_context']}",
                                                      "data.max_length=64"],
     r"generating, the longest prompt data\.max_length=64 allows \+ method\.max_new_tokens = 63 \+ 128 needs 191 "
     r"positions but the student's context is 64 tokens"),
    ("lm-data-missing", lambda m, t: ["method.name=minillm", f"method.lm_data={t / 'nope.txt'}"],
     r"method\.lm_data '.*nope\.txt' not found"),
    ("seqkd-cache-is-a-directory", lambda m, t: ["method.name=seqkd", f"method.seqkd_cache={m['root']}"],
     r"method\.seqkd_cache '.*' is a directory; give a file path"),
    ("online-layers-out-of-range", lambda m, t: ["online.layers=9"], r"online\.layers=9: the teacher has 4 layers"),
    ("valid-data-missing", lambda m, t: [f"data.valid={t / 'valid.jsonl'}"], r"data source '.*valid\.jsonl' does not exist"),
    ("output-dir-under-a-file", lambda m, t: [f"output_dir={m['student'] / 'config.json' / 'run'}"],
     r"output_dir '.*config\.json/run' is not writable \(Not a directory\)"),
]
if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
    CASES.append(("tracker-not-installed", lambda m, t: ["train.trackers=[tensorboard]"],
                  r"train\.trackers: tensorboard is not installed, so nothing would be logged to it; pip install "
                  r"tensorboard"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_preflight_refuses(case, models, tiny_data, tmp_path, monkeypatch):
    """Before any weight is read: loading a model would fail this test."""
    import transformers

    def no_weights(*a, **k):
        raise AssertionError("preflight loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    cfg = build_config({}, base(models, tiny_data, tmp_path) + case[1](models, tmp_path))
    with pytest.raises(OkdError, match=case[2]) as e:
        preflight(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.skipif(not _hooked(), reason="okd.train.trainer.train does not call preflight yet")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_preflight_refuses_through_the_command(case, models, tiny_data, tmp_path, capsys):
    from okd.cli import main

    capsys.readouterr()
    code = main(["train", "--quiet", *base(models, tiny_data, tmp_path), *case[1](models, tmp_path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("okd:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    import re

    assert re.search(case[2], lines[0]), lines[0]


def test_generation_budget_is_the_prompt_that_can_occur(models, tiny_data, tmp_path):
    """A 64-position student with data.max_length=32: no training prompt exceeds 31 tokens, so 31 + 16 new tokens
    fit although the default data.max_prompt_length (256) alone would not."""
    overrides = base(models, tiny_data, tmp_path) + ["method.name=gkd", f"student.path={models['short_context']}",
                                                     f"teacher.path={models['short_context']}", "data.max_length=32",
                                                     "method.max_new_tokens=16"]
    assert preflight(build_config({}, overrides)) == []


def test_preflight_passes_a_good_config(models, tiny_data, tmp_path):
    for method in ("sft", "fkd", "okd", "gkd", "seqkd", "minillm", "distillm"):
        extra = ["online.rank=4"] if method == "okd" else []
        assert preflight(build_config({}, base(models, tiny_data, tmp_path) + [f"method.name={method}", *extra])) == []


WARNINGS = [
    (["train.eval_every=5"], r"^train\.eval_every=5 does nothing without data\.valid"),
    (["train.eval_rouge=true"], r"^train\.eval_rouge=true does nothing without data\.valid"),
    (["method.name=fkd", "method.beta=0.2", "online.rank=4", "method.lmbda=0.9"],
     r"^method\.beta, method\.lmbda, online\.rank do nothing for method\.name=fkd \(divergence fkl, teacher frozen\)"),
    (["method.name=sft", "method.temperature=2"], r"^method\.temperature does nothing for method\.name=sft"),
    (["method.name=seqkd", "method.top_p=0.9"], r"^method\.top_p does nothing for method\.name=seqkd"),
    (["method.name=sft", "method.divergence=fkl"], r"^method\.divergence does nothing for method\.name=sft "
                                                   r"\(divergence ce, teacher none\)"),
    (["train.warmup_steps=5", "train.max_steps=3"], r"train\.warmup_steps=5 is not below train\.max_steps=3: the "
                                                    r"learning rate never reaches train\.lr"),
    (["train.save_every=10", "train.max_steps=3"], r"train\.save_every=10 is not below train\.max_steps=3"),
]


@pytest.mark.parametrize("extra, pattern", WARNINGS, ids=[w[0][-1] for w in WARNINGS])
def test_settings_that_do_nothing_are_one_line_warnings(extra, pattern, models, tiny_data, tmp_path):
    import re

    warnings = preflight(build_config({}, base(models, tiny_data, tmp_path) + extra))
    assert any(re.search(pattern, w) for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


def test_batch_larger_than_the_data_is_said():
    cfg = build_config({}, ["train.batch_size=8"])
    assert data_warnings(cfg, 32) == []
    (w,) = data_warnings(cfg, 3)
    assert w == ("train.batch_size=8 is more than the 3 training examples: every step trains on batches of 3; "
                 "lower train.batch_size (or give more data)")
    (w,) = data_warnings(cfg, 12, world=2)
    assert w.startswith("train.batch_size=8 x 2 processes is more than the 12 training examples")
    (w,) = data_warnings(build_config({}, ["train.batch_size=4", "train.grad_accum=4"]), 10)
    assert "each step sees some examples twice; lower train.grad_accum" in w


def test_output_paths(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    check_output_dir(tmp_path / "new" / "deeper")  # creatable
    check_output_file(tmp_path / "new" / "results.json")
    with pytest.raises(OkdError, match=r"^-o '.*' is a directory; give a file path \(e\.g\. '.*results\.json'\)$"):
        check_output_file(tmp_path)
    with pytest.raises(OkdError, match=r"^-o '.*a_file/x\.json' is not writable \(Not a directory\); give -o a "
                                       r"writable file path$"):
        check_output_file(tmp_path / "a_file" / "x.json")
    with pytest.raises(OkdError, match=r"^output_dir '.*a_file' is a file, not a directory"):
        check_output_dir(tmp_path / "a_file")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(tmp_path)) else
                        real_access(p, mode))  # a read-only place (root may write anywhere)
    with pytest.raises(OkdError, match=r"^-o '.*out\.json' is not writable \((Permission denied|Read-only file "
                                       r"system)\)"):
        check_output_file(tmp_path / "out.json")
    with pytest.raises(OkdError, match=r"^output_dir '.*run' is not writable"):
        check_output_dir(tmp_path / "run")


def test_data_directory_checked_up_front(models, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    cfg = build_config({}, base(models, tmp_path / "data", tmp_path) + [f"data.valid={tmp_path / 'data'}"])
    with pytest.raises(OkdError, match=r"no file for split 'valid' \(found splits: train\)"):
        preflight(cfg)
