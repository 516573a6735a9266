"""The catalogue of user mistakes (docs/errors.md): each one exits non-zero with one line
`okd: error: ...` naming the problem and what to do, and no traceback.

Every case goes through the real entry point `okd.cli.main([...])`; two also run as a subprocess.
The ids below are the rows of docs/errors.md.
"""

from __future__ import annotations

import json
import logging
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from okd.cli import main
from okd.train.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs, tiny_data) -> dict[str, Path]:
    """Broken inputs: files, directories and models, built once."""
    from okd.models.tiny import byte_tokenizer, save_tiny

    root = tmp_path_factory.mktemp("mistakes")
    w = {"root": root, "teacher": tiny_dirs["teacher"], "student": tiny_dirs["student"], "data": tiny_data}
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} {i}."} for i in range(8)]

    def write(name: str, text: str) -> Path:
        (root / name).write_text(text)
        return root / name

    w["config_bad_yaml"] = write("bad.yaml", "train:\n  lr: [1e-4\n  batch_size: 2\n")
    w["config_list"] = write("list.yaml", "- teacher\n- student\n")
    w["config_section_scalar"] = write("scalar.yaml", "train: 5\n")
    w["malformed_line"] = write("malformed.jsonl", json.dumps(rows[0]) + "\n" + '{"instruction": "x", "output": \n')
    w["truncated_json"] = write("truncated.json", json.dumps(rows, indent=1)[:-40])
    w["missing_field"] = write("missing.jsonl", json.dumps({"instruction": "Say hi."}) + "\n")
    w["empty_response"] = write("empty_response.jsonl", json.dumps({"instruction": "Say hi.", "output": "  "}) + "\n")
    w["unknown_format"] = write("unknown.jsonl", json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    w["empty_file"] = write("empty.jsonl", "\n")
    w["not_utf8"] = root / "latin1.jsonl"
    w["not_utf8"].write_bytes(json.dumps({"instruction": "caf\u00e9", "output": "x"}, ensure_ascii=False).encode("latin-1"))
    w["long_responses"] = write("long.jsonl", "".join(
        json.dumps({"instruction": "Write.", "output": "word " * 40}) + "\n" for _ in range(4)))
    (root / "empty_dir").mkdir()
    w["empty_dir"] = root / "empty_dir"
    w["not_a_model"] = write("notes.txt", "not a model\n")
    w["garbage_gguf"] = root / "x.gguf"
    w["garbage_gguf"].write_bytes(os.urandom(512))
    w["cut_gguf"] = root / "cut.gguf"
    w["cut_gguf"].write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # right magic, then nothing
    w["corrupt_weights"] = save_tiny(root / "corrupt", "llama", layers=1, hidden=32, seed=3)
    (w["corrupt_weights"] / "model.safetensors").write_bytes(b"\x00" * 64)
    # a student with another tokenizer: the byte tokenizer plus two added tokens
    other = save_tiny(root / "other_tok", "llama", layers=1, hidden=32, seed=4, vocab_size=264)
    tok = byte_tokenizer()
    tok.add_tokens(["<x1>", "<x2>"])
    tok.save_pretrained(other)
    w["other_tokenizer"] = other
    w["a_file"] = write("a_file", "")
    # issue 18
    w["config_duplicate"] = write("dup.yaml", "train:\n  lr: 1.0e-4\n  lr: 3.0e-4\n")
    w["config_binary"] = root / "binary.yaml"
    w["config_binary"].write_bytes(b"\xff\xfe\x00\x01train")
    w["config_bad_date"] = write("date.yaml", "output_dir: 2024-13-45\n")
    w["short_answers"] = write("short.jsonl", "".join(
        json.dumps({"instruction": f"Please say the word number {i}.", "output": "ok"}) + "\n" for i in range(8)))
    w["deep_json"] = write("deep.jsonl", '{"instruction": ' + "[" * 5000 + "]" * 5000 + ', "output": "x"}\n')
    w["surrogate"] = write("surrogate.jsonl", '{"instruction": "a\\ud800", "output": "b"}\n')
    return w


def base(w, tmp_path) -> list[str]:
    return [f"teacher.path={w['teacher']}", f"student.path={w['student']}", f"data.train={w['data']}",
            "data.max_length=128", "train.batch_size=4", "train.max_steps=1", "online.rank=4",
            f"output_dir={tmp_path / 'run'}"]


def without(args: list[str], *keys: str) -> list[str]:
    return [a for a in args if a.split("=", 1)[0] not in keys]


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", "--quiet", *argv])
    return code, capsys.readouterr().err


def check_one_line(code: int, err: str, pattern: str) -> str:
    import re

    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("okd:")]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0])
    assert lines[0].startswith("okd: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# (id, argv builder, pattern of the message). Builders get (world, base args, tmp_path).
CASES = [
    # --- the config file and overrides
    ("config-missing", lambda w, b, t: ["-c", str(t / "nope.yaml"), *b], r"config file '.*nope\.yaml' not found"),
    ("config-invalid-yaml", lambda w, b, t: ["-c", str(w["config_bad_yaml"]), *b],
     r"config file '.*bad\.yaml' line \d+ is not valid YAML"),
    ("config-not-a-mapping", lambda w, b, t: ["-c", str(w["config_list"]), *b], r"must hold a mapping of sections"),
    ("config-section-not-a-mapping", lambda w, b, t: ["-c", str(w["config_section_scalar"]), *b],
     r"'train' is not a section"),
    ("unknown-key", lambda w, b, t: [*b, "train.lrr=1e-4"], r"config key 'train\.lrr': unknown key"),
    ("unknown-key-wrong-section", lambda w, b, t: [*b, "train.rank=4"],
     r"config key 'train\.rank': unknown key \(did you mean 'online\.rank'\?"),
    ("unknown-section", lambda w, b, t: [*b, "trian.lr=1e-4"], r"config key 'trian': unknown key"),
    ("ill-typed-number", lambda w, b, t: [*b, "train.lr=fast"], r"config key 'train\.lr': Input should be a valid number"),
    ("ill-typed-integer", lambda w, b, t: [*b, "train.max_steps=1.5"], r"config key 'train\.max_steps': .*integer"),
    ("ill-typed-bool", lambda w, b, t: [*b, "data.group_by_length=maybe"], r"config key 'data\.group_by_length': .*boolean"),
    ("override-without-equals", lambda w, b, t: [*b, "train.lr"], r"override 'train\.lr' is not of the form key=value"),
    ("override-without-key", lambda w, b, t: [*b, "=3"], r"override '=3' has no key"),
    ("override-into-a-value", lambda w, b, t: [*b, "train.lr.x=1"], r"config key 'train\.lr'"),
    ("temperature-zero", lambda w, b, t: [*b, "method.temperature=0"], r"config key 'method\.temperature': must be > 0"),
    ("temperature-negative", lambda w, b, t: [*b, "method.temperature=-1"], r"method\.temperature': must be > 0"),
    ("beta-out-of-range", lambda w, b, t: [*b, "method.beta=1.5"], r"method\.beta': must be between 0 and 1"),
    ("batch-size-zero", lambda w, b, t: [*b, "train.batch_size=0"], r"train\.batch_size': must be >= 1"),
    ("negative-save-every", lambda w, b, t: [*b, "train.save_every=-5"], r"train\.save_every': must be >= 0"),
    ("learning-rate-not-positive", lambda w, b, t: [*b, "train.lr=0"], r"train\.lr': must be > 0"),
    ("lora-rank-zero", lambda w, b, t: [*b, "online.rank=0"], r"online\.rank': must be >= 1"),
    ("unknown-method", lambda w, b, t: [*b, "method.name=distil"], r"config key 'method\.name': Input should be 'sft'"),
    ("unknown-divergence", lambda w, b, t: [*b, "method.divergence=kl"], r"config key 'method\.divergence'"),
    ("unknown-template", lambda w, b, t: [*b, "data.template=vicuna"], r"config key 'data\.template'"),
    ("fp16-on-cpu", lambda w, b, t: [*b, "train.mixed_precision=fp16"], r"fp16 needs a GPU"),
    ("config-duplicate-key", lambda w, b, t: ["-c", str(w["config_duplicate"]), *b],
     r"config file '.*dup\.yaml' line 3 is not valid YAML: key 'lr' appears twice in one mapping"),
    ("config-not-utf8", lambda w, b, t: ["-c", str(w["config_binary"]), *b], r"config file '.*binary\.yaml' is not UTF-8"),
    ("config-is-a-directory", lambda w, b, t: ["-c", str(w["empty_dir"]), *b], r"config file '.*empty_dir' is a directory"),
    ("config-bad-date", lambda w, b, t: ["-c", str(w["config_bad_date"]), *b],
     r"config file '.*date\.yaml' is not valid YAML \(ValueError: month must be in 1\.\.12\)"),
    ("override-empty-key-part", lambda w, b, t: [*b, "train..lr=1"], r"config key 'train\.\.lr' has an empty part"),
    ("integer-written-as-exponent", lambda w, b, t: [*b, "train.max_steps=2e3"],
     r"config key 'train\.max_steps': Input should be a valid integer; YAML reads 2e3 as text, not a number: write 2000"),
    ("section-given-a-value", lambda w, b, t: [*b, "method=fkd"],
     r"config key 'method': .*; method is a section of keys: set one of them, e\.g\. method\.name=fkd"),
    ("boolean-for-integer", lambda w, b, t: [*b, "train.max_steps=true"],
     r"config key 'train\.max_steps': Input should be a valid integer; got the boolean true \(YAML reads"),
    ("boolean-for-number", lambda w, b, t: [*b, "method.ce_weight=yes"],
     r"config key 'method\.ce_weight': Input should be a valid number; got the boolean true"),
    ("number-for-string", lambda w, b, t: [*b, "output_dir=2024"],
     r"config key 'output_dir': Input should be a valid string; YAML reads 2024 as a number: quote it"),
    ("not-finite", lambda w, b, t: [*b, "train.lr=.inf"], r"config key 'train\.lr': Input should be a finite number"),
    ("ce-weight-negative", lambda w, b, t: [*b, "method.ce_weight=-5"], r"config key 'method\.ce_weight': must be >= 0"),
    ("max-new-tokens-zero", lambda w, b, t: [*b, "method.max_new_tokens=0"],
     r"config key 'method\.max_new_tokens': must be >= 1"),
    ("gen-temperature-negative", lambda w, b, t: [*b, "method.gen_temperature=-1"],
     r"config key 'method\.gen_temperature': must be >= 0"),
    ("top-p-out-of-range", lambda w, b, t: [*b, "method.top_p=0"], r"config key 'method\.top_p': must be > 0 and <= 1"),
    ("lora-alpha-not-positive", lambda w, b, t: [*b, "online.lora_alpha=-8"], r"config key 'online\.lora_alpha': must be > 0"),
    ("dropout-out-of-range", lambda w, b, t: [*b, "online.dropout=1.5"],
     r"config key 'online\.dropout': must be >= 0 and < 1"),
    ("empty-list", lambda w, b, t: [*b, "online.target_modules=[]"],
     r"config key 'online\.target_modules': must not be an empty list"),
    ("seed-out-of-range", lambda w, b, t: [*b, "train.seed=-1"], r"config key 'train\.seed': must be between 0 and"),
    ("output-dir-empty", lambda w, b, t: [*b, "output_dir="], r"config key 'output_dir': must not be empty"),
    # --- methods and teachers
    ("method-needs-teacher", lambda w, b, t: [*without(b, "teacher.path"), "method.name=fkd"],
     r"method 'fkd' needs a teacher; set teacher\.path"),
    ("teacher-none-for-kd", lambda w, b, t: [*b, "method.name=rkd", "method.teacher=none"],
     r"method\.teacher: method 'rkd' needs a teacher"),
    ("teacher-for-sft", lambda w, b, t: [*b, "method.name=sft", "method.teacher=frozen"],
     r"sft trains without a teacher"),
    ("seqkd-online-teacher", lambda w, b, t: [*b, "method.name=seqkd", "method.teacher=online"],
     r"method\.teacher=online does not combine with method\.name=seqkd"),
    ("minillm-online-teacher", lambda w, b, t: [*b, "method.name=minillm", "method.teacher=online"],
     r"does not combine with method\.name=minillm"),
    ("ce-for-a-distilling-method", lambda w, b, t: [*b, "method.name=fkd", "method.divergence=ce"],
     r"method\.divergence=ce is the ground-truth cross-entropy, which fkd does not train on"),
    ("ce-for-okd", lambda w, b, t: [*b, "method.name=okd", "method.divergence=ce"],
     r"method\.divergence=ce is the ground-truth cross-entropy, which okd does not train on"),
    ("minillm-other-divergence", lambda w, b, t: [*b, "method.name=minillm", "method.divergence=fkl"],
     r"minillm optimises the sequence-level reverse KL"),
    ("online-layers-out-of-range", lambda w, b, t: [*b, "online.layers=9"], r"online\.layers=9: the teacher has 4 layers"),
    ("online-layers-bad-index", lambda w, b, t: [*b, "online.layers=[0,7]"], r"online\.layers"),
    ("online-unknown-target-module", lambda w, b, t: [*b, "online.target_modules=[q_projx]"], r"online\.target_modules|q_projx"),
    # --- models
    ("student-path-unset", lambda w, b, t: without(b, "student.path"), r"student\.path is not set"),
    ("model-path-missing", lambda w, b, t: [*b, f"student.path={t / 'no_such_model'}"],
     r"model '.*no_such_model' not found: not a local path, a preset"),
    ("model-dir-without-model", lambda w, b, t: [*b, f"teacher.path={w['empty_dir']}"], r"holds no model"),
    ("model-path-is-other-file", lambda w, b, t: [*b, f"student.path={w['not_a_model']}"], r"is a file but not a \.gguf"),
    ("gguf-garbage", lambda w, b, t: [*b, f"student.path={w['garbage_gguf']}"],
     r"could not load a tokenizer from '.*x\.gguf'.*not a GGUF file"),
    ("gguf-cut-short", lambda w, b, t: [*b, f"student.path={w['cut_gguf']}"], r"could not load a tokenizer from '.*cut\.gguf'"),
    ("corrupt-weights", lambda w, b, t: [*b, f"student.path={w['corrupt_weights']}"],
     r"could not load a causal LM from '.*corrupt'"),
    ("tokenizers-differ", lambda w, b, t: [*b, f"student.path={w['other_tokenizer']}"],
     r"teacher and student tokenizers differ \(260 vs 262 tokens; 0 only in the teacher, 2 only in the student"),
    # --- data
    ("data-train-unset", lambda w, b, t: without(b, "data.train"), r"data\.train is not set"),
    ("data-missing", lambda w, b, t: [*b, f"data.train={t / 'nope.jsonl'}"], r"data source '.*nope\.jsonl' does not exist"),
    ("valid-data-missing", lambda w, b, t: [*b, f"data.valid={t / 'valid.jsonl'}"], r"data source '.*valid\.jsonl' does not exist"),
    ("data-empty-directory", lambda w, b, t: [*b, f"data.train={w['empty_dir']}"], r"the directory has no \.jsonl or \.json files"),
    ("data-empty-file", lambda w, b, t: [*b, f"data.train={w['empty_file']}"], r"empty\.jsonl: the file is empty"),
    ("malformed-json-line", lambda w, b, t: [*b, f"data.train={w['malformed_line']}"],
     r"malformed\.jsonl line 2: malformed JSON .*data\.skip_invalid"),
    ("truncated-json-file", lambda w, b, t: [*b, f"data.train={w['truncated_json']}"],
     r"truncated\.json line \d+: malformed JSON"),
    ("missing-field", lambda w, b, t: [*b, f"data.train={w['missing_field']}"], r"missing\.jsonl line 1: missing field 'output'"),
    ("empty-response", lambda w, b, t: [*b, f"data.train={w['empty_response']}"],
     r"empty_response\.jsonl line 1: empty response \(field 'output'\)"),
    ("unknown-record-format", lambda w, b, t: [*b, f"data.train={w['unknown_format']}"],
     r"unknown\.jsonl line 1: record matches no known format \(keys: answer, question\)"),
    ("data-not-utf8", lambda w, b, t: [*b, f"data.train={w['not_utf8']}"], r"latin1\.jsonl: not UTF-8 text"),
    ("every-example-too-long", lambda w, b, t: [*b, f"data.train={w['long_responses']}", "data.max_length=24"],
     r"every training example is longer than data\.max_length=24 .* raise data\.max_length"),
    ("max-length-below-two", lambda w, b, t: [*b, "data.max_length=1"], r"data\.max_length must be at least 2"),
    ("prompt-cut-to-template", lambda w, b, t: [*b, f"data.train={w['short_answers']}", "data.max_length=18"],
     r"data\.max_length=18 leaves no room for the instruction in 8 of 8 examples.*raise data\.max_length"),
    ("unreadable-json", lambda w, b, t: [*b, f"data.train={w['deep_json']}"],
     r"deep\.jsonl line 1: unreadable JSON \(nested too deeply\); fix the record or set data\.skip_invalid"),
    ("text-not-unicode", lambda w, b, t: [*b, f"data.train={w['surrogate']}"],
     r"surrogate\.jsonl line 1: field 'instruction' holds text that is not valid Unicode"),
    ("model-file-missing", lambda w, b, t: [*b, "student.path=no_such_dir/model.gguf"],
     r"model 'no_such_dir/model\.gguf' not found: not a local path.*\(nothing at 'no_such_dir/model\.gguf' relative to"),
    # --- the output directory
    ("output-dir-under-a-file", lambda w, b, t: [*b, f"output_dir={w['a_file'] / 'run'}"],
     r"output_dir '.*a_file/run' is not writable"),
    ("output-dir-is-a-file", lambda w, b, t: [*b, f"output_dir={w['a_file']}"], r"output_dir '.*a_file' is a file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_gives_one_line(case, world, tmp_path, capsys):
    _, build, pattern = case
    code, err = run_cli(capsys, build(world, base(world, tmp_path), tmp_path))
    check_one_line(code, err, pattern)


# --- mistakes that need a run first


def test_existing_run_without_resume(world, tmp_path, capsys):
    args = [*base(world, tmp_path), "method.name=fkd"]
    assert run_cli(capsys, args)[0] == 0
    check_one_line(*run_cli(capsys, args), r"already holds a run; pass --resume to continue it")


def test_resume_of_a_finished_run(world, tmp_path, capsys, caplog):
    """Not an error (a job script resuming after a pre-emption finds its run just finished): said, exit 0."""
    args = [*base(world, tmp_path), "method.name=fkd"]
    assert run_cli(capsys, args)[0] == 0
    with caplog.at_level(logging.WARNING):
        assert run_cli(capsys, [*args, "--resume"])[0] == 0
    assert any("is finished (step 1 of train.max_steps=1); nothing to do" in r.getMessage() for r in caplog.records)


def _digest(path):
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


def test_resume_never_trains_over_a_finished_run(world, tmp_path, capsys, caplog):
    """A finished run whose checkpoints are gone: --resume with more steps would start over from the initial
    student and replace the trained one; refused in one line, nothing written. With its own max_steps: finished."""
    import shutil

    args = [*base(world, tmp_path), "method.name=fkd", "train.max_steps=2"]
    assert run_cli(capsys, args)[0] == 0
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints")
    before = _digest(run)
    check_one_line(*run_cli(capsys, [*args, "train.max_steps=8", "--resume"]),
                   r"output_dir '.*run' holds a finished run \(2 steps: student/, summary.json\) and no checkpoint to "
                   r"continue it from, so --resume would train over it from the start; okd never overwrites a run")
    with caplog.at_level(logging.WARNING):
        assert run_cli(capsys, [*args, "--resume"])[0] == 0
    assert any("is finished (step 2 of train.max_steps=2)" in r.getMessage() for r in caplog.records)
    assert _digest(run) == before


def test_resume_below_the_checkpoint_step(world, tmp_path, capsys):
    """train.max_steps below the checkpoint's step would end "done" with no metrics and a config saying another
    budget: refused before anything is written."""
    args = [*base(world, tmp_path), "method.name=fkd", "train.max_steps=3", "train.save_every=1"]
    assert run_cli(capsys, args)[0] == 0
    run = tmp_path / "run"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    before = _digest(run)
    check_one_line(*run_cli(capsys, [*without(args, "train.max_steps"), "train.max_steps=1", "--resume"]),
                   r"cannot resume '.*run' with train.max_steps=1: its checkpoint is at step 3, beyond it; set "
                   r"train.max_steps to at least 3 \(the run's own: 3\)")
    assert _digest(run) == before


def test_resume_with_other_training_data_says_so(world, tmp_path, capsys, caplog):
    """The encoded training data are part of what an exact resume depends on: a change is named in a warning."""
    args = [*base(world, tmp_path), "method.name=fkd", "train.max_steps=2", "train.save_every=1"]
    assert run_cli(capsys, args)[0] == 0
    (tmp_path / "run" / "summary.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert run_cli(capsys, [*without(args, "data.max_length"), "data.max_length=100", "--resume"])[0] == 0
    assert any("the training data differ from those the checkpoint was trained on" in r.getMessage()
               for r in caplog.records)


def test_resume_with_changed_config(world, tmp_path, capsys, caplog):
    """Changing what the checkpoints depend on is an error; any other change is a warning naming the keys."""
    args = [*base(world, tmp_path), "method.name=okd", "train.max_steps=2", "train.save_every=1"]
    assert run_cli(capsys, args)[0] == 0
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after its last checkpoint
    check_one_line(*run_cli(capsys, [*args, "online.rank=8", "--resume"]),
                   r"cannot resume with a changed online\.rank \(4 -> 8\)")
    check_one_line(*run_cli(capsys, [*args, "method.name=rkd", "--resume"]),
                   r"cannot resume with a changed method\.name \('okd' -> 'rkd'\), method\.teacher")
    with caplog.at_level(logging.WARNING):
        code, err = run_cli(capsys, [*args, "train.lr=2e-3", "train.max_steps=3", "--resume"])
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "resuming with a changed config" in r.getMessage()]
    assert len(warned) == 1
    assert "train.lr (0.0001 -> 0.002)" in warned[0] and "train.max_steps (2 -> 3)" in warned[0]


def test_checkpoint_of_another_model(world, tmp_path, capsys):
    """A checkpoint that does not fit the models (here: another student written into it) is named."""
    from safetensors.torch import save_file

    args = [*base(world, tmp_path), "method.name=fkd", "train.max_steps=2", "train.save_every=1"]
    assert run_cli(capsys, args)[0] == 0
    run = tmp_path / "run"
    (run / "summary.json").unlink()
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    save_file({"x": __import__("torch").zeros(1)}, str(last / "student.safetensors"))
    write_manifest(last)  # as written by a run of that other model (not damage)
    check_one_line(*run_cli(capsys, [*args, "--resume"]), r"checkpoint '.*step-0000002' cannot be resumed with this config")


def test_damaged_checkpoint(world, tmp_path, capsys, caplog):
    """A truncated optim.pt (a copy or a disk that filled up outside okd) is a damaged checkpoint, not a
    config mismatch: the resume names it in one warning and continues from the checkpoint before it; with no
    intact checkpoint left, one line says so."""
    args = [*base(world, tmp_path), "method.name=fkd", "train.max_steps=3", "train.save_every=1"]
    assert run_cli(capsys, args)[0] == 0
    run = tmp_path / "run"
    (run / "summary.json").unlink()
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    data = (last / "optim.pt").read_bytes()
    (last / "optim.pt").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert run_cli(capsys, [*args, "--resume"])[0] == 0
    assert any(re.search(r"checkpoint '.*step-0000003' is damaged \(optim\.pt: \d+ bytes, written with \d+\); "
                         r"resuming from the checkpoint before it, step-0000002", r.getMessage()) for r in caplog.records)
    (run / "summary.json").unlink()
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        (ckpt / "method.pt").write_bytes(b"")
    check_one_line(*run_cli(capsys, [*args, "--resume"]),
                   r"checkpoint '.*step-0000002' is damaged \(method\.pt: 0 bytes, written with \d+\), and no intact "
                   r"checkpoint precedes it; delete it to start the run over with --resume")


def test_section_override_merges_into_the_file(world, tmp_path):
    """Not a mistake: `method={name: fkd}` changes the name and keeps the file's other method keys."""
    from okd.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: okd\n  beta: 0.2\n  temperature: 2.0\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["method={name: fkd}", "train={max_steps: 7}"])
    assert (cfg.method.name, cfg.method.beta, cfg.method.temperature) == ("fkd", 0.2, 2.0)
    assert (cfg.train.lr, cfg.train.max_steps) == (1e-3, 7)


def test_missing_relative_model_dir_is_not_looked_up_on_the_hub(world, tmp_path, capsys, monkeypatch):
    """`runs/x` with runs/ here, or `../models/m`: a missing local path, said at once (no hub retries)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for spec in ("runs/student", "../models/m", "runs/model.safetensors"):
        check_one_line(*run_cli(capsys, [*base(world, tmp_path), f"student.path={spec}"]),
                       rf"model '{spec}' not found: not a local path")


def test_processes_that_did_not_join(world, tmp_path, capsys, monkeypatch):
    """`accelerate launch --num_processes 2` on a machine where the processes do not form one group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_one_line(*run_cli(capsys, base(world, tmp_path)), r"launched as 2 processes, but they did not join")


def test_overrides_may_follow_options(world, tmp_path, capsys):
    """Not a mistake: `okd train --resume key=value` works (argparse alone would reject it)."""
    code = main(["train", "--quiet", *base(world, tmp_path)[:3], "--resume", *base(world, tmp_path)[3:]])
    assert code == 0


@pytest.mark.parametrize("argv, pattern", [
    (["train", "-c", "/no/such/config.yaml"], r"^okd: error: config file '/no/such/config\.yaml' not found$"),
    (["train", "method.name=fkd", "student.path=/no/such/model", "teacher.path=/no/such/model", "data.train=x.jsonl"],
     r"^okd: error: model '/no/such/model' not found"),
])
def test_mistakes_through_the_real_command(argv, pattern, tmp_path):
    import re

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "okd", *argv, f"output_dir={tmp_path / 'run'}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(pattern, r.stderr.strip()), r.stderr


def test_catalogue_is_documented():
    """Every case id is a row of docs/errors.md, and the catalogue has at least 20 mistakes."""
    doc = (ROOT / "docs" / "errors.md").read_text()
    ids = [c[0] for c in CASES] + ["existing-run-without-resume", "resume-finished-run", "resume-changed-config",
                                   "resume-over-a-finished-run", "resume-below-checkpoint", "cache-temperature-not-stored",
                                   "checkpoint-of-another-model", "processes-did-not-join", "nan-loss",
                                   "interrupted", "sigterm", "checkpoint-save-failed", "sharded-cross-tokenizer",
                                   "deepspeed-config-refused", "checkpoint-other-distributed-setting", "fsdp2-refused",
                                   "checkpoint-damaged", "model-dir-missing-relative",
                                   # tests/test_preflight.py (before any model loads) and its warnings
                                   "student-vocab-too-small", "context-shorter-than-max-length",
                                   "context-shorter-than-generation", "lm-data-missing", "seqkd-cache-is-a-directory",
                                   "tracker-not-installed", "eval-output-not-writable", "eval-every-without-valid",
                                   "unused-settings", "steps-beyond-max-steps", "batch-larger-than-data",
                                   # tests/test_faults.py, tests/test_data.py
                                   "output-dir-in-use", "skip-invalid-count", "unread-data-files", "prompts-partly-cut",
                                   "data-other-format", "data-json-object"]
    missing = [i for i in ids if f"`{i}`" not in doc]
    assert not missing, missing
    assert len(ids) >= 20


@pytest.mark.parametrize("kind, version, overrides, pattern", [
    ("FSDP", 2, [], r"FSDP version 2 is not supported by okd train .* fsdp_version: 1"),
    ("DEEPSPEED", 1, ["method.name=fkd", "method.cross_tokenizer=uld"],
     r"method\.cross_tokenizer=uld is not supported under DeepSpeed ZeRO-3 yet .* run it with DDP"),
    ("FSDP", 1, ["method.name=jsd", "method.cross_tokenizer=hybrid"],
     r"method\.cross_tokenizer=hybrid is not supported under FSDP yet"),
])
def test_distributed_combinations_refused(kind, version, overrides, pattern):
    """What `okd train` refuses under `accelerate launch` with FSDP/DeepSpeed (no GPU here to launch them:
    the check is called with the distributed type Accelerate would report)."""
    from accelerate.utils import DistributedType

    from okd.config import build_config
    from okd.errors import OkdError
    from okd.train.sharding import check_distributed

    with pytest.raises(OkdError, match=pattern):
        check_distributed(build_config({}, overrides), DistributedType[kind], version)
    check_distributed(build_config({}, ["method.name=okd"]), DistributedType.FSDP, 1)  # supported cases
    check_distributed(build_config({}, ["method.name=gkd", "train.eval_rouge=true"]), DistributedType.DEEPSPEED, 1)
    check_distributed(build_config({}, ["method.name=gkd"]), DistributedType.MULTI_GPU, None)
