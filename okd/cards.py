"""Model cards for a run directory: `student/README.md` and `online_module/README.md` (DESIGN §6).

Each card is a Hugging Face model card (YAML metadata, then markdown) naming what a researcher needs
to trust or reproduce the model: teacher, student initialisation, method, data, budget, final metrics
and the command that made it. `write_cards(run_dir, cfg, summary, command)` writes both (the online
module's only where the run has one); `ensure_cards(run_dir)` rebuilds them from the run's
config.yaml and summary.json when they are missing (runs made before cards existed, `okd push`).

`cfg` is an okd Config or its dict (`config.yaml`); `summary` is summary.json's dict. The module
imports nothing above okd.config, so the trainer (or anything else) can call it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from okd.config import get_dotted

MARKER = "<!-- written by okd (okd/cards.py) -->"


def _tree(cfg: Any) -> dict:
    if isinstance(cfg, dict):
        return cfg
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    raise TypeError(f"cfg must be an okd Config or a dict, got {type(cfg).__name__}")



def _yaml_list(name: str, values: list[str]) -> list[str]:
    return [f"{name}:"] + [f"- {json.dumps(v)}" for v in values if v]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


def _metrics_table(summary: dict) -> list[str]:
    final = summary.get("final_metrics") or {}
    rows = [("steps", summary.get("steps")), ("training time (s, loop without validation)", summary.get("train_s")),
            ("wall clock (s)", summary.get("wall_clock_s")), ("tokens seen", summary.get("tokens")),
            ("training tokens/s", summary.get("tokens_per_s")), ("peak memory (MB)", summary.get("peak_memory_mb")),
            ("device", summary.get("device"))]
    rows += [(k, v) for k, v in sorted(final.items())]
    if sel := summary.get("selected"):  # train.select_by: these weights are not the last step's
        rows.append((f"weights selected by {sel['metric']}", f"step {sel['step']} ({sel['metric']} {_fmt(sel['value'])})"))
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return lines


def _training_lines(tree: dict, summary: dict) -> list[str]:
    m, d, t = tree.get("method") or {}, tree.get("data") or {}, tree.get("train") or {}
    divergence = summary.get("divergence") or m.get("divergence") or "the method's default"
    teacher_mode = summary.get("teacher") or m.get("teacher") or "the method's default"
    lines = [f"- **method**: `{m.get('name')}` (divergence `{divergence}`, teacher `{teacher_mode}`, "
             f"temperature {m.get('temperature', 1.0)})",
             f"- **teacher**: `{get_dotted(tree, 'teacher.path')}`" + (f" (cache `{get_dotted(tree, 'teacher.cache')}`)"
                                                                  if get_dotted(tree, "teacher.cache") else ""),
             f"- **student initialisation**: `{get_dotted(tree, 'student.path')}`",
             f"- **data**: train `{d.get('train')}`, valid `{d.get('valid')}`, template `{d.get('template')}`, "
             f"max length {d.get('max_length')}, max prompt length {d.get('max_prompt_length')}",
             f"- **budget**: {t.get('max_steps')} steps × batch {t.get('batch_size')} × grad accum "
             f"{t.get('grad_accum', 1)}, lr {t.get('lr')}, warm-up {t.get('warmup_steps', 0)}, seed {t.get('seed')}, "
             f"mixed precision {t.get('mixed_precision')}"]
    if (summary.get("teacher") or m.get("teacher")) == "online" or m.get("name") == "okd":
        o = tree.get("online") or {}
        lines.append(f"- **online module** (LoRA in the teacher): rank {o.get('rank')}, lora_alpha "
                     f"{o.get('lora_alpha')}, layers {o.get('layers') or 'all'}, α {o.get('alpha')}, lr {o.get('lr')}")
    return lines


def _command_lines(command: str | None) -> list[str]:
    return ["## How it was made", "", "```bash", command or "(command not recorded)", "```",
            "", "The resolved configuration is the run directory's `config.yaml`; its metrics per step are "
            "`metrics.jsonl`, and `summary.json` holds the figures above."]


def student_card(cfg: Any, summary: dict, command: str | None = None) -> str:
    """The text of student/README.md."""
    tree = _tree(cfg)
    method = get_dotted(tree, "method.name")
    teacher = get_dotted(tree, "teacher.path")
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation",
            *_yaml_list("tags", ["okd", "knowledge-distillation", f"okd-{method}"]),
            *_yaml_list("base_model", [get_dotted(tree, "student.path")] if _hub_like(get_dotted(tree, "student.path")) else []),
            "---"]
    body = [MARKER, "", f"# Student distilled with okd (`{method}`)", "",
            f"A causal language model distilled from `{teacher}` with [okd](https://arxiv.org/abs/2409.12512) "
            f"(method `{method}`).", "", "## Training", "", *_training_lines(tree, summary), "",
            "## Final metrics", "", *_metrics_table(summary), "",
            "Validation CE (`valid_loss`) is the student's cross-entropy on the reference responses of data.valid "
            "(nats per response token).", "", *_command_lines(command), "", "## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```", "",
            f"Prompts were formatted with the `{get_dotted(tree, 'data.template')}` template during training; "
            "`okd eval --model PATH/student` uses it (and the run's prompt length) by itself.", ""]
    return "\n".join(meta + body)


def online_card(cfg: Any, summary: dict, command: str | None = None) -> str:
    """The text of online_module/README.md (instead of peft's empty template)."""
    tree = _tree(cfg)
    teacher = get_dotted(tree, "teacher.path")
    o = tree.get("online") or {}
    meta = ["---", "library_name: peft", *_yaml_list("tags", ["okd", "knowledge-distillation", "lora", "online-module"]),
            *_yaml_list("base_model", [teacher] if _hub_like(teacher) else []), "---"]
    body = [MARKER, "", "# OKD online module (LoRA adapter of the teacher)", "",
            f"The online module trained alongside the student in an okd run: a LoRA adapter on `{teacher}` "
            f"(rank {o.get('rank')}, lora_alpha {o.get('lora_alpha')}, layers {o.get('layers') or 'all'}) that "
            "moved the frozen teacher's distribution toward what the student can represent (module loss "
            f"α·KL(q‖p′) + (1−α)·CE with α = {o.get('alpha')}). The distilled model is `../student/`.", "",
            "## Training", "", *_training_lines(tree, summary), "", "## Final metrics", "", *_metrics_table(summary),
            "", *_command_lines(command), "", "## Use", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{teacher}")',
            'teacher = PeftModel.from_pretrained(base, "PATH/online_module")', "```", ""]
    return "\n".join(meta + body)


def _hub_like(path: Any) -> bool:
    """A hub id (org/name), not a local path or preset: worth naming as base_model in the metadata."""
    if not isinstance(path, str) or path.count("/") != 1 or path.startswith((".", "/", "~")):
        return False
    return not Path(path).exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_student_card(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> Path:
    """Write `<run>/student/README.md`; returns its path."""
    return _write(Path(out_dir) / "student" / "README.md", student_card(cfg, summary, command))


def write_online_card(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> Path | None:
    """Write `<run>/online_module/README.md` over peft's template; None where the run has no module."""
    module = Path(out_dir) / "online_module"
    if not module.is_dir():
        return None
    return _write(module / "README.md", online_card(cfg, summary, command))


def write_cards(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> list[Path]:
    """Both cards (the online module's where it exists). `command` defaults to this process's argv."""
    command = command if command is not None else command_line()
    written = [write_student_card(out_dir, cfg, summary, command)]
    online = write_online_card(out_dir, cfg, summary, command)
    return written + ([online] if online else [])


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it (`okd train ...` for the console script)."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("okd", "__main__.py"):
        argv[0] = "okd"
    return " ".join(shlex.quote(a) for a in argv)


def has_card(path: str | Path) -> bool:
    """An okd-written README.md exists at `path` (a model directory)."""
    readme = Path(path) / "README.md"
    try:
        return MARKER in readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def ensure_cards(run_dir: str | Path, command: str | None = None) -> list[Path]:
    """Write the cards of a finished run from its config.yaml and summary.json where they are missing
    (or are peft's template); returns what was written. Runs without summary.json are left alone."""
    import yaml

    run_dir = Path(run_dir)
    try:
        tree = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return []
    command = command or summary.get("command")
    written = []
    if (run_dir / "student").is_dir() and not has_card(run_dir / "student"):
        written.append(write_student_card(run_dir, tree, summary, command))
    if (run_dir / "online_module").is_dir() and not has_card(run_dir / "online_module"):
        written.append(write_online_card(run_dir, tree, summary, command))
    return [p for p in written if p]
