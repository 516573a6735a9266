"""Model cards for a run directory: `student/README.md` and `online_module/README.md` (DESIGN §6).

Each card is a Hugging Face model card (YAML metadata, then markdown) naming what a researcher needs
to trust or reproduce the model: teacher, student initialisation, method, data, budget, final metrics
and the command that made it. `write_cards(run_dir, cfg, summary, command)` writes both (the online
module's only where the run has one); `ensure_cards(run_dir)` rebuilds them from the run's
config.yaml and summary.json when they are missing (runs made before cards existed, `okd push`).

`cfg` is an okd Config or its dict (`config.yaml`); `summary` is summary.json's dict. A card never names a
machine-local path: presets by their hub ids, local models by their last part and the hub model they
descend from (`base_model_of`), local data by the file name. The module imports nothing above okd.config
and okd's model and data presets, so the trainer (or anything else) can call it.
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
    values = list(dict.fromkeys(v for v in values if v))  # once each, in order
    return [f"{name}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


# ----------------------------------------------------------------------------- names fit for a hub

def preset_hub_id(path: Any) -> str | None:
    from okd.models.presets import MODEL_PRESETS, preset_dir

    if isinstance(path, str) and path in MODEL_PRESETS:
        return MODEL_PRESETS[path].hub_id
    try:  # a preset's converted directory under OKD_HOME
        here = Path(str(path)).expanduser().resolve()
        return next((p.hub_id for p in MODEL_PRESETS.values() if preset_dir(p.name).resolve() == here), None)
    except (OSError, RuntimeError, ValueError):
        return None


def _front_matter_base_model(model_dir: Path) -> str | None:
    """The first `base_model:` of a model card (an okd card or the hub's), where it is a hub id."""
    import yaml

    try:
        text = (model_dir / "README.md").read_text(encoding="utf-8")
        meta = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, IndexError, yaml.YAMLError):
        return None
    value = meta.get("base_model") if isinstance(meta, dict) else None
    value = value[0] if isinstance(value, list) and value else value
    return value if _hub_like(value) else None


def base_model_of(path: Any, _depth: int = 0) -> str | None:
    """The hub id a model descends from: a preset's, a hub id itself, and for a local directory the model it
    was pruned from (okd_student.json) or its card's base_model (a run's student, a tuned teacher)."""
    if not path or _depth > 8:
        return None
    if hub := preset_hub_id(path):
        return hub
    if _hub_like(path):
        return str(path)
    d = Path(str(path)).expanduser()
    try:
        origin = json.loads((d / "okd_student.json").read_text()).get("teacher")
    except (OSError, ValueError, AttributeError):
        origin = None
    if origin:
        return base_model_of(origin, _depth + 1)
    return _front_matter_base_model(d)


def teacher_hub_id(teacher: Any, teacher_repo: str | None = None) -> str | None:
    """The hub id an adapter of `teacher` names as its base model: the one given, a preset's, a hub id itself
    (None for a local model: the hub cannot load it)."""
    return teacher_repo or preset_hub_id(teacher) or (teacher if _hub_like(teacher) else None)


def local_name(path: str) -> str:
    """A local path as a card names it: its last part (a run's student: run/student)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "student" and p.parent.name else p.name


def public_model(path: Any) -> str:
    """How a card names a model: a preset by its hub id, a hub id as it is, a local directory by its last part
    (machine-local paths are not published) and the hub model it descends from."""
    if not path:
        return "none"
    if hub := preset_hub_id(path):
        return hub
    if _hub_like(path):
        return str(path)
    origin = base_model_of(path)
    return f"a local model `{local_name(str(path))}`" + (f", from `{origin}`" if origin else "")


def public_data(source: Any) -> str | None:
    """A data source as a card names it: a preset or hub dataset id as it is, a local file by its name."""
    if not source:
        return None
    from okd.data.presets import is_data_preset

    if is_data_preset(str(source)):
        return f"`{source}` (okd preset)"
    if _hub_like(source):
        return f"`{source}`"
    return f"a local file `{Path(str(source)).name}`"


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
    data = [f"train {public_data(d.get('train'))}"] + ([f"valid {public_data(d.get('valid'))}"] if d.get("valid") else [])
    lines = [f"- **method**: `{m.get('name')}` (divergence `{divergence}`, teacher `{teacher_mode}`"
             + (f", temperature {m.get('temperature', 1.0)}" if divergence != "ce" else "") + ")"]
    if teacher_mode != "none":
        lines.append(f"- **teacher**: {_code(public_model(get_dotted(tree, 'teacher.path')))}"
                     + (" (its predictions read from a teacher cache)" if get_dotted(tree, "teacher.cache") else ""))
    lines += [f"- **student initialisation**: {_code(public_model(get_dotted(tree, 'student.path')))}",
              f"- **data**: {', '.join(data)}, template `{d.get('template')}`, max length {d.get('max_length')}, "
              f"max prompt length {d.get('max_prompt_length')}",
              f"- **budget**: {t.get('max_steps')} steps × batch {t.get('batch_size')} × grad accum "
              f"{t.get('grad_accum', 1)}, lr {t.get('lr')}, warm-up {t.get('warmup_steps', 0)}, seed {t.get('seed')}, "
              f"mixed precision {t.get('mixed_precision')}"]
    if teacher_mode == "online":
        o = tree.get("online") or {}
        lines.append(f"- **online module** (LoRA in the teacher): rank {o.get('rank')}, lora_alpha "
                     f"{o.get('lora_alpha')}, layers {o.get('layers') or 'all'}, α {o.get('alpha')}, lr {o.get('lr')}")
    return lines


def _code(name: str) -> str:
    return name if "`" in name else f"`{name}`"


def _command_lines(summary: dict, command: str | None) -> list[str]:
    commands = [command] if command else summary.get("commands") or [summary.get("command") or "(command not recorded)"]
    what = "the commands" if len(commands) > 1 else "the command"
    return ["## How it was made", "", f"By {what} below{', in order (the later ones resumed the run)' if len(commands) > 1 else ''}:",
            "", "```bash", *commands, "```", "", "The resolved configuration is the run directory's `config.yaml`; "
            "its metrics per step are `metrics.jsonl`, and `summary.json` holds the figures above."]


def student_card(cfg: Any, summary: dict, command: str | None = None, *, repo_id: str | None = None,
                 where: str = "PATH/student") -> str:
    """The text of student/README.md; `repo_id` (okd push) is the model's hub id in its usage snippet."""
    tree = _tree(cfg)
    method = get_dotted(tree, "method.name")
    load = repo_id or where
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation",
            *_yaml_list("tags", ["okd", "knowledge-distillation", method]),
            *_yaml_list("base_model", [base_model_of(get_dotted(tree, "student.path"))]), "---"]
    teacher = get_dotted(tree, "teacher.path") if summary.get("teacher", "x") != "none" else None
    origin = f"distilled from {_code(public_model(teacher))}" if teacher else "fine-tuned (no teacher)"
    body = [MARKER, "", f"# Student {'distilled' if teacher else 'trained'} with okd (`{method}`)", "",
            f"A causal language model {origin} with [okd](https://arxiv.org/abs/2409.12512) "
            f"(method `{method}`).", "", "## Training", "", *_training_lines(tree, summary), "",
            "## Final metrics", "", *_metrics_table(summary), "",
            "Validation CE (`valid_loss`) is the student's cross-entropy on the reference responses of data.valid "
            "(nats per response token).", "", *_command_lines(summary, command), "", "## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{load}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{load}")', "```", "",
            f"Prompts were formatted with the `{get_dotted(tree, 'data.template')}` template during training; "
            f"`okd eval --model {load}` uses it (and the run's prompt length) by itself.", ""]
    return "\n".join(meta + body)


def online_card(cfg: Any, summary: dict, command: str | None = None, *, repo_id: str | None = None,
                teacher_repo: str | None = None) -> str:
    """The text of online_module/README.md (instead of peft's empty template)."""
    tree = _tree(cfg)
    teacher = get_dotted(tree, "teacher.path")
    base = teacher_hub_id(teacher, teacher_repo)
    o = tree.get("online") or {}
    meta = ["---", "library_name: peft", *_yaml_list("tags", ["okd", "knowledge-distillation", "lora", "online-module"]),
            *_yaml_list("base_model", [base]), "---"]
    adapter = f"{repo_id}, subfolder=\"online_module\"" if repo_id else "PATH/online_module"
    body = [MARKER, "", "# OKD online module (LoRA adapter of the teacher)", "",
            f"The online module trained alongside the student in an okd run: a LoRA adapter on "
            f"{_code(base or public_model(teacher))} (rank {o.get('rank')}, lora_alpha {o.get('lora_alpha')}, layers "
            f"{o.get('layers') or 'all'}) that moved the frozen teacher's distribution toward what the student can "
            f"represent (module loss α·KL(q‖p′) + (1−α)·CE with α = {o.get('alpha')}). The distilled model is "
            f"{'the repository root' if repo_id else '`../student/`'}.", "",
            "## Training", "", *_training_lines(tree, summary), "", "## Final metrics", "", *_metrics_table(summary),
            "", *_command_lines(summary, command), "", "## Use", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{base or "PATH/teacher"}")',
            f'teacher = PeftModel.from_pretrained(base, "{adapter}")' if not repo_id else
            f'teacher = PeftModel.from_pretrained(base, "{repo_id}", subfolder="online_module")', "```", ""]
    return "\n".join(meta + body)


def _hub_like(path: Any) -> bool:
    """A hub id (org/name), not a local path or preset: worth naming as base_model in the metadata."""
    if not isinstance(path, str) or path.count("/") != 1 or path.startswith((".", "/", "~")):
        return False
    return not Path(path).exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def teacher_terms(teacher: Any) -> Path | None:
    """The teacher directory's NOTICE (a preset under its own terms, e.g. Gemma's), or None."""
    from okd.models.loading import resolve_model_source

    try:
        source, _ = resolve_model_source(str(teacher)) if teacher else (None, None)
    except Exception:  # noqa: BLE001 - a hub id, a missing path: no local terms to pass on
        return None
    notice = Path(source) / "NOTICE" if source else None
    return notice if notice is not None and notice.is_file() else None


def write_student_card(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> Path:
    """Write `<run>/student/README.md`; returns its path. A teacher under its own terms (its directory has
    a NOTICE, as the gemma3-270m preset's) passes them on: the NOTICE and the terms files are copied next
    to the student and the card says so (Gemma's terms count a distilled model as a Model Derivative)."""
    import shutil

    out = Path(out_dir)
    where = f"{out}/student" if not out.is_absolute() else f"{out.name}/student"  # as typed, never absolute
    text = student_card(cfg, summary, command, where=where)
    teacher = get_dotted(_tree(cfg), "teacher.path") if summary.get("teacher", "x") != "none" else None
    notice = teacher_terms(teacher)
    if notice is not None:
        for f in [notice, *notice.parent.glob("*TERMS*")]:
            shutil.copy2(f, out / "student" / f.name)
        first = notice.read_text(encoding="utf-8").strip().splitlines()[0]
        text += f"\n## Terms\n\nThe teacher's terms apply to this student: {first} (`NOTICE`, copied here).\n"
    return _write(out / "student" / "README.md", text)


def write_online_card(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> Path | None:
    """Write `<run>/online_module/README.md` over peft's template; None where the run has no module."""
    module = Path(out_dir) / "online_module"
    if not module.is_dir():
        return None
    hub = preset_hub_id(get_dotted(_tree(cfg), "teacher.path"))
    adapter = module / "adapter_config.json"
    if hub and adapter.is_file():  # a preset's converted directory: name the teacher by its hub id, loadable anywhere
        conf = json.loads(adapter.read_text())
        conf["base_model_name_or_path"] = hub
        adapter.write_text(json.dumps(conf, indent=2) + "\n")
    return _write(module / "README.md", online_card(cfg, summary, command))


def write_cards(out_dir: str | Path, cfg: Any, summary: dict, command: str | None = None) -> list[Path]:
    """Both cards (the online module's where it exists). `command`: the one command to show; by default the
    summary's `commands` (every command that trained the run), else this process's argv."""
    command = command if command is not None or summary.get("commands") else command_line()
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
    written = []
    if (run_dir / "student").is_dir() and not has_card(run_dir / "student"):
        written.append(write_student_card(run_dir, tree, summary, command))
    if (run_dir / "online_module").is_dir() and not has_card(run_dir / "online_module"):
        written.append(write_online_card(run_dir, tree, summary, command))
    return [p for p in written if p]
