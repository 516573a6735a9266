"""Every command line of README.md runs (issue 17): the same commands, in the README's order, on tiny models
where the real ones take minutes. The real names are swapped for tiny stand-ins (TINY below), and flags
that only make a run shorter are appended (FASTER); nothing else changes. A README line without an entry
in COMMANDS fails `test_every_readme_command_is_covered`, so a new command cannot go untested."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from okd.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks: comments dropped, `a; b` split."""
    out = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s{2,}#.*$", "", line).strip()
            out += [part.strip() for part in line.split("; ")] if line.startswith("okd ") else [line] if line else []
    return out


# README command -> (how: okd | python | make | launch, flags appended to make it short). In README order.
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "make demo": ("make", []),
    "make test": ("make", []),
    "okd student init --from smollm2-135m-instruct --layers 8 -o students/smol8": ("okd", []),
    "okd train -c configs/okd-smollm2.yaml": ("okd", []),
    "okd train -c configs/okd-smollm2.yaml method.name=fkd output_dir=runs/fkd-smollm2": ("okd", []),
    # the run above is finished: "continue" means more steps (docs/errors.md resume-finished-run)
    "okd train -c configs/okd-smollm2.yaml --resume": ("okd", ["train.max_steps=3"]),
    "okd eval --model runs/okd-smollm2 --data sharegpt --data seed-tasks --seeds 5 -o runs/okd-smollm2/eval.json":
        ("okd", ["--limit", "2", "--max-new-tokens", "4"]),
    "okd eval --model runs/okd-smollm2 --teacher smollm2-135m-instruct --data sharegpt -o "
    "runs/okd-smollm2/exposure.json": ("okd", ["--limit", "2", "--seeds", "1", "--max-new-tokens", "4",
                                               "--exposure-samples", "1", "--exposure-max-len", "4",
                                               "--exposure-length", "2"]),
    "okd plot runs/okd-smollm2 runs/fkd-smollm2 -o curves.png": ("okd", []),
    # (the test's teacher is a tiny local model standing in for the preset, whose hub id push knows by itself)
    "okd push runs/okd-smollm2 --repo my-org/smollm2-okd-8l": ("okd", ["--teacher-repo",
                                                                     "HuggingFaceTB/SmolLM2-135M-Instruct"]),
    "okd models list": ("okd", []),
    "okd data list": ("okd", []),
    "python -c \"from okd.models.tiny import save_tiny; save_tiny('tiny/teacher', layers=4); "
    "save_tiny('tiny/student', layers=2, hidden=32)\"": ("python", []),
    "okd train -c configs/tiny.yaml method.name=fkd train.max_steps=20 output_dir=runs/fkd": ("okd", []),
    "okd compare -c configs/compare-tiny.yaml": ("slow", []),
    "okd compare -c configs/compare-smollm2.yaml": ("okd", ["--dry-run"]),  # 70 minutes: the grid is validated
    "okd compare -c configs/compare-study.yaml": ("okd", ["--dry-run"]),  # hours: the grid is validated
    "okd compare -c configs/compare-protocol.yaml --only fkd_s2 --import docs/protocol/archive --export "
    "docs/protocol/archive": ("okd", ["--dry-run"]),  # hours (tests/test_compare_archive.py runs a grid in parts)
    "okd analyze --teacher smollm2-135m-instruct --student students/smol8 --data sharegpt -o runs/analysis":
        ("okd", ["--divergences", "fkl", "--taus", "1", "--steps", "1", "--limit", "2", "--max-length", "160",
                 "--set", "train.batch_size=2", "data.max_length=160"]),
    "ACCELERATE_USE_CPU=1 accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m okd train -c "
    "configs/tiny.yaml": ("slow", ["train.max_steps=2", "output_dir=runs/ddp"]),
}


def tiny_names(site: Path) -> dict[str, str]:
    """The real names the README uses -> tiny stand-ins built in `site` (whole arguments only)."""
    return {"smollm2-135m-instruct": str(site / "models" / "teacher"), "sharegpt": str(site / "data" / "sharegpt")}


def swap(args: list[str], names: dict[str, str]) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a == "8" and i and args[i - 1] == "--layers":
            a = "2"  # the tiny teacher has 4 layers
        out.append(names.get(a, a))
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_dirs):
    """A working directory like a clone: configs/ (the SmolLM2 ones pointed at tiny stand-ins), a tiny
    teacher for smollm2-135m-instruct and a tiny split directory for sharegpt."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").mkdir()
    for name in ("tiny.yaml", "compare-smollm2.yaml", "compare-study.yaml", "compare-tiny.yaml", "compare-protocol.yaml"):
        (root / "configs" / name).write_text((ROOT / "configs" / name).read_text())
    os.symlink(ROOT / "configs" / "accelerate", root / "configs" / "accelerate")
    (root / "docs" / "protocol" / "archive").mkdir(parents=True)  # what --import reads (--dry-run: it exists)
    (root / "models").mkdir()
    os.symlink(tiny_dirs["teacher"], root / "models" / "teacher")
    data = root / "data" / "sharegpt"
    data.mkdir(parents=True)
    words = ["red", "blue", "green", "cat", "dog", "sun"]
    for split, n in (("train", 16), ("valid", 4), ("test", 4)):
        rows = [{"instruction": f"Say {words[i % 6]}.", "input": "", "output": f"{words[i % 6]}."} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load((ROOT / "configs" / "okd-smollm2.yaml").read_text())
    cfg["teacher"]["path"] = tiny_names(root)["smollm2-135m-instruct"]
    cfg["data"].update(train=str(data), valid=str(data), max_length=160, valid_limit=4)
    cfg["online"].update(rank=4, lora_alpha=4)
    cfg["train"].update(max_steps=2, batch_size=2, save_every=0, eval_every=1, warmup_steps=0, mixed_precision="no")
    (root / "configs" / "okd-smollm2.yaml").write_text(yaml.safe_dump(cfg))
    return root


def run_line(line: str, site: Path, monkeypatch) -> None:
    how, extra = COMMANDS[line]
    args = swap(shlex.split(line), tiny_names(site)) + extra
    if how == "python":
        assert args[:2] == ["python", "-c"]
        exec(compile(args[2], "<README>", "exec"), {})
    elif how == "okd":
        assert main(args[1:]) == 0, line


def test_every_readme_command_is_covered():
    assert readme_commands() == list(COMMANDS), "README commands changed: update tests/test_readme.py COMMANDS"


def test_readme_commands_run_on_tiny_models(site, monkeypatch, capsys):
    monkeypatch.chdir(site)
    monkeypatch.setenv("OKD_HOME", str(site / "okd-home"))
    from test_runs import FakeHub

    hub = FakeHub(monkeypatch)
    for line, (how, _) in COMMANDS.items():
        if how in ("okd", "python"):
            run_line(line, site, monkeypatch)
    assert json.loads((site / "runs/okd-smollm2/summary.json").read_text())["steps"] == 3  # resumed to 3
    assert (site / "curves.png").stat().st_size > 0 and (site / "runs/analysis/analysis.md").is_file()
    assert hub.commits and "README.md" in hub.commits[0][1]
    ev = json.loads((site / "runs/okd-smollm2/eval.json").read_text())
    assert set(ev["datasets"]) == {"sharegpt", "seed-tasks"} and ev["settings"]["template"] == "chat"  # the run's
    assert (site / "runs/fkd/student/config.json").is_file()


def test_readme_python_block_runs(site, monkeypatch, tiny_dirs):
    monkeypatch.chdir(site)
    (code,) = readme_blocks("python")
    names = tiny_names(site)
    code = (code.replace('"smollm2-135m-instruct"', repr(names["smollm2-135m-instruct"]))
            .replace('"students/smol8"', repr(str(tiny_dirs["student"])))
            .replace('"data": {"train": "sharegpt", "valid": "sharegpt"',
                     f'"data": {{"train": {names["sharegpt"]!r}, "valid": {names["sharegpt"]!r}')
            .replace('evaluate(run, "sharegpt"', f'evaluate(run, {names["sharegpt"]!r}')
            .replace('"max_steps": 50', '"max_steps": 2').replace("max_new_tokens=48", "max_new_tokens=4"))
    assert "sharegpt\"" not in code.replace('["sharegpt"]', "")  # every use swapped but the results key
    scope: dict = {}
    exec(compile(code, "<README python>", "exec"), scope)
    assert (scope["run"] / "summary.json").is_file() and scope["cfg"].train.max_steps == 10


@pytest.mark.slow
def test_readme_slow_commands(site, monkeypatch):
    """The tiny demo (which compare-tiny.yaml reads), the compare grid on it, and a 2-process CPU launch."""
    monkeypatch.chdir(site)
    if not (site / "tiny" / "student").is_dir():  # configs/tiny.yaml's models, made by the README's python line
        run_line(next(c for c, (how, _) in COMMANDS.items() if how == "python"), site, monkeypatch)
    assert main(["demo", "--tiny", "--steps", "5", "--eval-limit", "4"]) == 0
    grid = yaml.safe_load((site / "configs" / "compare-tiny.yaml").read_text())
    grid["base"]["train"].update(max_steps=2, eval_every=1)
    grid["eval"].update(seeds=1, limit=2)
    (site / "configs" / "compare-tiny.yaml").write_text(yaml.safe_dump(grid))
    assert main(["compare", "-c", "configs/compare-tiny.yaml"]) == 0
    from launch import launch_env

    line = next(c for c in COMMANDS if c.startswith("ACCELERATE_USE_CPU=1"))
    env_part, cmd = line.split(" ", 1)
    args = shlex.split(cmd) + COMMANDS[line][1]
    args[0] = str(Path(sys.executable).parent / "accelerate")
    r = subprocess.run(args, cwd=site, env=launch_env(**dict([env_part.split("=")])), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site / "runs/ddp/student/config.json").is_file()
