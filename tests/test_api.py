"""The Python API (DESIGN §6): `from okd import train, evaluate, load_config`, OkdError messages, quiet
libraries, and `okd.train` callable although it is also the training package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import okd
from okd import OkdError, evaluate, load_config, train

ROOT = Path(__file__).resolve().parents[1]


def _tree(tiny_dirs, tiny_data, out, **train_keys) -> dict:
    return {"teacher": {"path": str(tiny_dirs["teacher"])}, "student": {"path": str(tiny_dirs["student"])},
            "data": {"train": str(tiny_data), "valid": str(tiny_data), "template": "chat", "max_length": 160,
                     "max_prompt_length": 40, "valid_limit": 4},
            "method": {"name": "fkd"}, "train": {"max_steps": 2, "batch_size": 4, **train_keys}, "output_dir": str(out)}


def test_import_okd_is_light():
    code = "import sys, okd; okd.OkdError; print('torch' in sys.modules, 'okd.api' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert r.stdout.split() == ["False", "False"]


def test_load_config_from_dict_path_config_with_overrides(tiny_dirs, tiny_data, tmp_path):
    tree = _tree(tiny_dirs, tiny_data, tmp_path / "r")
    cfg = load_config(tree, {"train.lr": 0.003, "method.name": "okd"})
    assert (cfg.train.lr, cfg.method.name, cfg.data.template) == (0.003, "okd", "chat")
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert load_config(path, ["train.max_steps=7"]).train.max_steps == 7
    assert load_config(cfg, ["train.seed=3"]).train.seed == 3 and cfg.train.seed == 42  # a copy


@pytest.mark.parametrize("bad, message", [
    ({"train": {"max_stepz": 1}}, "train.max_stepz"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    (42, "config must be a dict, a YAML path or an okd Config"),
    ("/no/such.yaml", "config file '/no/such.yaml' not found"),
])
def test_mistakes_are_okd_errors_with_the_cli_message(bad, message):
    with pytest.raises(OkdError, match=message.replace(".", r"\.")) as e:
        load_config(bad)
    assert "\n" not in str(e.value)


def test_train_and_evaluate_from_a_notebook(tiny_dirs, tiny_data, tmp_path, capfd):
    run = train(_tree(tiny_dirs, tiny_data, tmp_path / "nb"), progress=False)
    assert run == tmp_path / "nb" and (run / "summary.json").is_file()
    results = evaluate(run, str(tiny_data), tmp_path / "e" / "r.json", limit=2, seeds=1, max_new_tokens=4)
    assert results["settings"]["template"] == "chat" and results["settings"]["max_prompt_length"] == 40
    assert json.loads((tmp_path / "e" / "r.json").read_text())["datasets"]
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err  # no library bars
    assert "template chat, max-prompt-length 40 from its config.yaml" in err
    with pytest.raises(OkdError, match="evaluate\\(\\): setting 'seeds': must be >= 1"):
        evaluate(run, str(tiny_data), tmp_path / "e2.json", seeds=0)
    with pytest.raises(OkdError, match="is a directory"):
        evaluate(run, str(tiny_data), tmp_path)


def test_okd_train_is_callable_although_it_is_a_package(tiny_dirs, tiny_data, tmp_path):
    import okd.train.trainer  # noqa: F401 - the package is imported: `okd.train` is the module now

    assert callable(okd.train) and okd.train.trainer.train is okd.train.train  # still the package too
    out = okd.train(_tree(tiny_dirs, tiny_data, tmp_path / "pkg", max_steps=1), progress=False)
    assert (out / "student" / "config.json").is_file()
    with pytest.raises(OkdError, match="method.name"):
        okd.train({"method": {"name": "nope"}})


def test_the_deepspeed_accelerator_notice_is_silenced():
    pytest.importorskip("deepspeed")
    code = ("from okd.entry import quiet_libraries; quiet_libraries(); import deepspeed.accelerator as a; "
            "a.get_accelerator()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Setting accelerator to CPU" not in r.stdout + r.stderr
