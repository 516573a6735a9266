"""Mistakes outside `okd train`'s config that used to end in a traceback, and messages that named the wrong
thing (docs/errors.md): each is one line naming the problem and what to do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from okd.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tiny_dirs, tiny_data, tmp_path_factory):
    from okd.config import build_config
    from okd.train import train

    out = tmp_path_factory.mktemp("msg") / "run"
    train(build_config({}, [f"teacher.path={tiny_dirs['teacher']}", f"student.path={tiny_dirs['student']}",
                            f"data.train={tiny_data}", "data.max_length=128", "method.name=sft", "train.max_steps=1",
                            "train.batch_size=4", f"output_dir={out}"]), progress=False)
    return out


def one_line(capsys, argv: list[str], pattern: str) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None) and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.search(pattern, last), last
    return last


def test_plot_to_a_file_matplotlib_cannot_write(finished_run, tmp_path, capsys):
    one_line(capsys, ["plot", str(finished_run), "-o", str(tmp_path / "x.txt")],
             r"^okd: error: -o '.*x\.txt': matplotlib writes .*\.png.* figures, chosen by the file name's ending; "
             r"give e\.g\. 'x\.png'$")
    assert not (tmp_path / "x.txt").exists()


def test_analyze_thresholds_out_of_order(finished_run, tiny_dirs, tiny_data, tmp_path, capsys):
    one_line(capsys, ["analyze", "--teacher", str(tiny_dirs["teacher"]), "--data", str(tiny_data), "--students",
                      str(finished_run / "student"), "--thresholds", "0.9", "0.1", "-o", str(tmp_path / "a")],
             r"^okd: error: --thresholds 0\.9 0\.1: give LO HI with 0 <= LO <= HI <= 1")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_teacher_cache_on_a_device_this_machine_lacks(tmp_path, capsys):
    one_line(capsys, ["teacher", "cache", "-o", str(tmp_path / "c"), "--device", "cuda"],
             r"^okd: error: --device cuda: this machine has no CUDA device .*; use --device cpu$")


def test_teacher_cache_on_a_device_torch_does_not_know(tmp_path, capsys):
    one_line(capsys, ["teacher", "cache", "-o", str(tmp_path / "c"), "--device", "banana"],
             r"argument --device: 'banana' is not a device")


def test_okd_home_is_a_file(tmp_path, capsys, monkeypatch):
    f = tmp_path / "home"
    f.write_text("")
    monkeypatch.setenv("OKD_HOME", str(f))
    one_line(capsys, ["models", "list"], r"^okd: error: OKD_HOME '.*home' is a file, not a directory; point OKD_HOME "
                                         r"at a directory")


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def test_push_without_a_network_is_one_line(finished_run, tmp_path):
    """The hub client's own connection error (not an HfHubHTTPError) was a traceback."""
    r = subprocess.run([sys.executable, "-m", "okd", "push", str(finished_run), "--repo", "me/x"], cwd=tmp_path,
                       env=_env(HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_test", HF_HUB_OFFLINE="0"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"^okd: error: push to me/x failed \(\w*Connect\w*: .*\); the hub could not be reached: check "
                     r"the network", r.stderr.strip().splitlines()[-1]), r.stderr


def test_ctrl_c_while_the_command_imports(tmp_path):
    """A Ctrl-C in the first half second (okd train still importing transformers) ends with one line, 130."""
    p = subprocess.Popen([sys.executable, "-m", "okd", "train", "train.max_steps=1"], cwd=tmp_path, env=_env(),
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "okd: interrupted"


def test_dollar_home_in_paths_is_expanded(monkeypatch, tmp_path):
    from okd.config import build_config
    from okd.errors import OkdError

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = build_config({}, ["output_dir=$HOME/runs/x", "data.train=${HOME}/d.jsonl", "teacher.path=~/t"])
    assert (cfg.output_dir, cfg.data.train, cfg.teacher.path) == (f"{tmp_path}/runs/x", f"{tmp_path}/d.jsonl",
                                                                   f"{tmp_path}/t")
    monkeypatch.delenv("OKD_NO_SUCH_VAR", raising=False)
    with pytest.raises(OkdError, match=r"^config key 'data.valid': \$OKD_NO_SUCH_VAR is not set in the environment"):
        build_config({}, ["data.valid=$OKD_NO_SUCH_VAR/v.jsonl"])


def test_a_datasets_save_to_disk_directory_is_read(tiny_data, tmp_path):
    """An HF datasets directory (save_to_disk) was read as JSON files ('dataset_info.json line 1: record matches no
    known format'): a Dataset is read whole, a DatasetDict by split (validation for valid)."""
    import json

    import datasets

    from okd.data import load_examples
    from okd.errors import OkdError

    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:10]),
                          "validation": datasets.Dataset.from_list(rows[10:13])}).save_to_disk(str(tmp_path / "dict"))
    expected = load_examples(tiny_data)
    assert [e.response for e in load_examples(tmp_path / "one")] == [e.response for e in expected]
    assert [e.instruction for e in load_examples(tmp_path / "dict", split="valid")] == \
        [e.instruction for e in expected[10:13]]
    assert len(load_examples(tmp_path / "dict")) == 10
    with pytest.raises(OkdError, match=r"dict: this DatasetDict has no split 'test' \(it has train, validation\)"):
        load_examples(str(tmp_path / "dict"), split="test")


def test_refused_validation_data_names_the_split_and_the_file(tiny_dirs, tmp_path):
    import json

    from okd.config import build_config
    from okd.errors import OkdError
    from okd.train import train

    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"instruction": "word " * 30, "input": "", "output": "answer " * (20 if i < 4 else 1)})
                            + "\n" for i in range(6)))
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"instruction": "Hi", "input": "", "output": "ok"}) + "\n" for _ in range(6)))
    cfg = build_config({}, [f"teacher.path={tiny_dirs['teacher']}", f"student.path={tiny_dirs['student']}",
                            f"data.train={short}", f"data.valid={long}", "data.max_length=64", "method.name=sft",
                            "train.max_steps=1", "train.batch_size=2", f"output_dir={tmp_path / 'r'}"])
    with pytest.raises(OkdError, match=r"leaves no room for the instruction in 4 of 6 examples of data.valid "
                                       r"'.*long.jsonl'"):
        train(cfg, progress=False)
