"""Fuzzing the user-facing readers: whatever a user feeds them, the outcome is a result or an `OkdError`
with a one-line message, never another exception (docs/errors.md).

Property-based (hypothesis, bounded): random malformed data files and directories through
`load_examples_with_stats` and `encode_examples`; random YAML configs and override lists through
`load_config` / `build_config`. Then every `okd` subcommand given garbage arguments exits non-zero
without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from okd.cli import main  # noqa: E402
from okd.config import build_config, load_config  # noqa: E402
from okd.data import encode_examples, load_examples_with_stats  # noqa: E402
from okd.errors import OkdError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize=True)


def _one_line(e: OkdError) -> None:
    msg = str(e)
    assert msg.strip(), "empty message"
    assert "\n" not in msg and "\r" not in msg, msg


@pytest.fixture(scope="module")
def tokenizer():
    from okd.models.tiny import byte_tokenizer

    return byte_tokenizer()


# ------------------------------------------------------------------------------------------- data

FIELDS = ["instruction", "input", "output", "response", "context", "prompt", "completion", "messages",
          "conversations", "role", "content", "from", "value", "text"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["", " ", "\n", "\u2028", "ok", "x" * 300]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
messages = st.lists(st.dictionaries(st.sampled_from(["role", "content", "from", "value", "text"]),
                                    st.one_of(st.sampled_from(["user", "assistant", "system", "gpt", "human", ""]),
                                              json_values), max_size=3), max_size=4)
records = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), st.one_of(json_values, messages), max_size=5),
    st.fixed_dictionaries({"instruction": scalars, "output": scalars}, optional={"input": scalars}),
    st.fixed_dictionaries({"messages": messages}),
)


def _line(rec, mangle: int) -> str:
    text = json.dumps(rec)
    if mangle == 1:
        return text[: max(1, len(text) // 2)]  # cut short
    if mangle == 2:
        return text.replace('"', "", 1)
    if mangle == 3:
        return '{"instruction": "\\ud800x", "output": "y\\udfff"}'  # lone surrogates
    if mangle == 4:
        return "[" * 3000 + "]" * 3000  # nested too deeply
    if mangle == 5:
        return '{"instruction": "a", "output": ' + "9" * 5000 + "}"  # a number past Python's digit limit
    return text


@st.composite
def data_files(draw):
    """(relative name, bytes) of one data file."""
    kind = draw(st.sampled_from(["jsonl", "array", "binary", "empty", "huge", "bom"]))
    recs = draw(st.lists(records, max_size=5))
    mangles = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5]), min_size=len(recs), max_size=len(recs)))
    if kind == "jsonl":
        body = "\n".join(_line(r, m) for r, m in zip(recs, mangles)).encode()
    elif kind == "array":
        text = json.dumps(recs, indent=draw(st.sampled_from([None, 1])))
        body = (text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text).encode()
    elif kind == "binary":
        body = draw(st.binary(max_size=200))
    elif kind == "empty":
        body = draw(st.sampled_from([b"", b"\n\n", b"   ", b"[]", b"{}", b"null"]))
    elif kind == "huge":
        body = (json.dumps({"instruction": "x" * 100_000, "output": "y"}) + "\n").encode()
    else:
        body = b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in recs).encode()
    name = draw(st.sampled_from(["train.jsonl", "valid.json", "data.jsonl", "more.json", "train-1.jsonl",
                                 "test.jsonl", "notes.txt"]))
    return name, body


@st.composite
def data_sources(draw):
    """A layout on disk: a single file, a directory of files (maybe with a sub-directory), or nothing."""
    layout = draw(st.sampled_from(["file", "file", "dir", "missing"]))
    files = draw(st.lists(data_files(), min_size=1, max_size=3))
    subdir = draw(st.booleans())
    return layout, files, subdir


def _materialise(root: Path, layout: str, files, subdir: bool) -> Path:
    if layout == "missing":
        return root / "nope" / "train.jsonl"
    if layout == "file":
        name, body = files[0]
        (root / name).write_bytes(body)
        return root / name
    d = root / "data"
    d.mkdir()
    for name, body in files:
        (d / name).write_bytes(body)
    if subdir:
        (d / "valid.jsonl").mkdir(exist_ok=True)  # a directory that looks like a data file
    return d


@FUZZ
@given(source=data_sources(), split=st.sampled_from(["train", "valid", "test", "dev", "other"]),
       skip=st.booleans(), limit=st.sampled_from([None, None, 1, 3, 0, -2]),
       template=st.sampled_from(["alpaca", "plain"]), max_length=st.sampled_from([2, 3, 16, 64, 400]))
def test_readers_fail_only_with_one_line(tokenizer, source, split, skip, limit, template, max_length):
    with tempfile.TemporaryDirectory() as tmp:
        path = _materialise(Path(tmp), *source)
        try:
            examples, stats = load_examples_with_stats(path, split=split, skip_invalid=skip, limit=limit)
        except OkdError as e:
            _one_line(e)
            return
        assert examples and stats["read"] >= len(examples)
        try:
            features, enc = encode_examples(examples, tokenizer, template, max_length)
        except OkdError as e:
            _one_line(e)
            return
        assert all(len(f["input_ids"]) <= max_length for f in features)


# ------------------------------------------------------------------------------------------- config

SECTIONS = {"teacher": ["path", "gguf_file", "dtype", "trust_remote_code"],
            "student": ["path", "revision", "dtype"],
            "data": ["train", "valid", "template", "max_length", "max_prompt_length", "skip_invalid", "train_limit"],
            "method": ["name", "divergence", "teacher", "temperature", "beta", "max_new_tokens", "gen_temperature",
                       "top_p", "replay_init_prob", "clip_eps", "ce_weight"],
            "online": ["rank", "lora_alpha", "dropout", "layers", "target_modules", "alpha"],
            "train": ["max_steps", "batch_size", "lr", "seed", "save_every", "save_every_minutes", "trackers",
                      "mixed_precision", "on_nan"]}
keys = st.one_of(st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + list(SECTIONS)
                                 + ["output_dir", "train.lr.x", "nope.key", "train.", ".lr", "a..b", ""]),
                 st.text(max_size=12))
yaml_values = st.one_of(json_values, st.dates(), st.sampled_from(["yes", "no", "on", "off", ".inf", ".nan", "1e-4",
                                                                   "fkd", "okd", "[1, 2]", "{name: fkd}", "~"]))
value_texts = st.one_of(st.sampled_from(["true", "no", "1e-4", "-1", "0", ".inf", "[", "]", "{", "{name: fkd}",
                                         "[tensorboard]", "2024", "2024-13-45", "!!python/name:os.system", "null",
                                         "'x", "a: b: c", "", "\x00"]), st.text(max_size=15))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, value_texts), st.text(max_size=15)),
                     max_size=5)


@st.composite
def config_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["tree", "tree", "scalar", "text", "binary"]))
    if kind == "tree":
        tree = draw(st.dictionaries(st.sampled_from(list(SECTIONS) + ["output_dir", "extra"]),
                                    st.one_of(st.dictionaries(st.sampled_from(sum(SECTIONS.values(), [])), yaml_values,
                                                              max_size=4), yaml_values), max_size=4))
        return yaml.safe_dump(tree).encode()
    if kind == "scalar":
        return yaml.safe_dump(draw(yaml_values)).encode()
    if kind == "text":
        return draw(st.sampled_from(["train:\n  lr: [1\n", "train:\n  lr: 1\n  lr: 2\n", "a: *x\n", "? [a]\n: 1\n",
                                     "train: !!python/object:os.system {}\n", "x: 2024-13-45\n", "train:\n",
                                     "- 1\n- 2\n", "train:\n\tlr: 1\n", "{train: {lr: .inf}}"])).encode()
    return draw(st.binary(max_size=100))


@FUZZ
@given(text=config_texts(), items=overrides, as_dir=st.booleans())
def test_config_loader_fails_only_with_one_line(text, items, as_dir):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        if as_dir and not text:
            path.mkdir()
        else:
            path.write_bytes(text)
        for attempt in (lambda: load_config(path, items), lambda: build_config({}, items)):
            try:
                cfg = attempt()
            except OkdError as e:
                _one_line(e)
            else:
                assert cfg.output_dir.strip()


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(list(SECTIONS) + ["output_dir"]),
                            st.one_of(st.dictionaries(st.sampled_from(sum(SECTIONS.values(), [])) | st.text(max_size=5),
                                                      yaml_values, max_size=4), yaml_values), max_size=4),
       items=overrides)
def test_build_config_from_any_tree(tree, items):
    try:
        build_config(tree, items)
    except OkdError as e:
        _one_line(e)


# ------------------------------------------------------------------------------------------- commands

NO = "/nonexistent/okd-fuzz"
# Garbage for every subcommand: (id, argv builder taking (tmp dir, junk file, teacher dir)).
GARBAGE = [
    ("top-flag", lambda t, j, m: ["--no-such-flag"]), ("top-command", lambda t, j, m: ["no-such-command"]),
    ("train-flag", lambda t, j, m: ["train", "--no-such-flag"]), ("train-word", lambda t, j, m: ["train", "garbage"]),
    ("train-key", lambda t, j, m: ["train", "x=1"]), ("train-binary-config", lambda t, j, m: ["train", "-c", str(j)]),
    ("train-dir-config", lambda t, j, m: ["train", "-c", str(t)]),
    ("train-value", lambda t, j, m: ["train", "train.lr=fast"]),
    ("train-section", lambda t, j, m: ["train", "method={name: nope}"]),
    ("teacher", lambda t, j, m: ["teacher"]), ("teacher-cache-flag", lambda t, j, m: ["teacher", "cache", "--nope"]),
    ("teacher-cache-word", lambda t, j, m: ["teacher", "cache", "-o", str(t / "c"), "garbage"]),
    ("teacher-cache-int", lambda t, j, m: ["teacher", "cache", "-o", str(t / "c"), "--batch-size", "abc"]),
    ("teacher-cache-config", lambda t, j, m: ["teacher", "cache", "-c", str(j), "-o", str(t / "c")]),
    ("eval", lambda t, j, m: ["eval"]), ("eval-no-data", lambda t, j, m: ["eval", "--model", NO, "-o", str(t / "o.json")]),
    ("eval-missing", lambda t, j, m: ["eval", "--model", NO, "--data", NO, "-o", str(t / "o.json")]),
    ("eval-seeds", lambda t, j, m: ["eval", "--model", NO, "--data", NO, "-o", str(t / "o.json"), "--seeds", "0"]),
    ("eval-float", lambda t, j, m: ["eval", "--model", NO, "--data", NO, "-o", str(t / "o.json"), "--temperature", "x"]),
    ("eval-output-dir", lambda t, j, m: ["eval", "--model", NO, "--data", NO, "-o", str(t)]),
    ("eval-predictions-missing", lambda t, j, m: ["eval", "--predictions", NO, "-o", str(t / "o.json")]),
    ("eval-predictions-binary", lambda t, j, m: ["eval", "--predictions", str(j), "-o", str(t / "o.json")]),
    ("analyze", lambda t, j, m: ["analyze", "--teacher", NO, "--data", NO, "-o", str(t / "a")]),
    ("analyze-missing", lambda t, j, m: ["analyze", "--teacher", NO, "--data", NO, "-o", str(t / "a"), "--students", NO]),
    ("analyze-float", lambda t, j, m: ["analyze", "--teacher", NO, "--data", NO, "-o", str(t / "a"), "--students", NO,
                                       "--taus", "abc"]),
    ("compare", lambda t, j, m: ["compare"]), ("compare-missing", lambda t, j, m: ["compare", "-c", NO]),
    ("compare-binary", lambda t, j, m: ["compare", "-c", str(j)]), ("compare-dir", lambda t, j, m: ["compare", "-c", str(t)]),
    ("models-list", lambda t, j, m: ["models", "list", "extra"]),
    ("models-fetch", lambda t, j, m: ["models", "fetch", "no-such-preset"]), ("models", lambda t, j, m: ["models", "nope"]),
    ("data-list", lambda t, j, m: ["data", "list", "extra"]),
    ("data-fetch", lambda t, j, m: ["data", "fetch", "no-such-preset"]),
    ("student-missing", lambda t, j, m: ["student", "init", "--from", NO, "--layers", "2", "-o", str(t / "s")]),
    ("student-int", lambda t, j, m: ["student", "init", "--from", str(m), "--layers", "abc", "-o", str(t / "s")]),
    ("student-zero", lambda t, j, m: ["student", "init", "--from", str(m), "--layers", "0", "-o", str(t / "s0")]),
    ("student-too-many", lambda t, j, m: ["student", "init", "--from", str(m), "--layers", "99", "-o", str(t / "s9")]),
    ("demo-flag", lambda t, j, m: ["demo", "--no-such-flag"]), ("demo-int", lambda t, j, m: ["demo", "--steps", "abc"]),
    ("demo-word", lambda t, j, m: ["demo", "extra"]),
    ("demo-negative", lambda t, j, m: ["demo", "--steps", "-1"]), ("demo-zero", lambda t, j, m: ["demo", "--steps", "0"]),
    ("demo-eval-zero", lambda t, j, m: ["demo", "--eval-limit", "0"]),
    ("demo-minutes", lambda t, j, m: ["demo", "--minutes", "-2"]),
    ("plot-missing", lambda t, j, m: ["plot", NO, "-o", str(t / "p.png")]),
    ("push-missing", lambda t, j, m: ["push", NO, "--repo", "org/name"]),
    ("push-repo", lambda t, j, m: ["push", str(t), "--repo", "not a repo"]),
]


@pytest.mark.parametrize("case", GARBAGE, ids=[c[0] for c in GARBAGE])
def test_every_command_refuses_garbage_without_a_traceback(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    """In process, through `okd.cli.main`: an argparse error (SystemExit 2) or an exit status != 0, never an
    exception, and no traceback printed."""
    monkeypatch.chdir(tmp_path)
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xff\xfe\x00garbage")
    argv = case[1](tmp_path, junk, tiny_dirs["teacher"])
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["train", "x=1"], ["eval", "--seeds", "0"],
                                  ["compare", "-c", "/nonexistent.yaml"]])
def test_the_real_command_refuses_garbage(argv, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "okd", *argv], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
