"""`okd eval` follows the run it evaluates, and keeps prompts inside the model's context.

Given a run directory (the output_dir of okd train) or its `student/`, the evaluation takes the run's
prompt template and prompt length (config.yaml: data.template, data.max_prompt_length) for every setting
the user did not give, and says so: a student trained with the chat template and prompted with another
scores next to nothing. Where a prompt plus the tokens to generate exceed the model's context (GPT-2:
n_positions), prompts are cut from the left to fit, with a warning; when not even one prompt token fits,
the evaluation stops with a one-line error before generating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from okd.config import get_dotted
from okd.errors import OkdError

# eval setting -> the run's config key it follows
FOLLOWED = {"template": "data.template", "max_prompt_length": "data.max_prompt_length"}


def locate_run(model: str | Path) -> tuple[str, Path | None]:
    """(the model to load, its run directory or None): a run directory means its student/."""
    p = Path(model)
    try:
        if p.is_dir() and (p / "config.yaml").is_file() and (p / "student").is_dir():
            return str(p / "student"), p
        if p.is_dir() and p.name == "student" and (p.parent / "config.yaml").is_file():
            return str(p), p.parent
    except OSError:  # a name too long for the file system, ...: not a run
        pass
    return str(model), None


def run_settings(run_dir: Path) -> dict:
    """The followed settings as the run's config.yaml has them (keys it lacks or garbles left out)."""
    import yaml

    try:
        tree = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    found = {key: get_dotted(tree, dotted) for key, dotted in FOLLOWED.items()}
    return {key: v for key, v in found.items() if v is not None}


def follow_run(model: str | Path, given: dict, log: Callable[[str], None] = print) -> tuple[str, dict]:
    """The model path to load and the followed settings to use.

    `given`: the followed settings the user set (None = not given). Returns only what the run supplies
    for the settings not given; logs one line saying what was taken, and one when a given setting differs
    from the run's.
    """
    path, run = locate_run(model)
    if run is None:
        return path, {}
    theirs = run_settings(run)
    taken = {k: v for k, v in theirs.items() if given.get(k) is None}
    if taken:
        what = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in taken.items())
        log(f"evaluating run {run}: {what} from its config.yaml (give --template/--max-prompt-length to override)")
    for k, v in given.items():
        if v is not None and k in theirs and theirs[k] != v:
            log(f"warning: run {run} trained with {FOLLOWED[k]}={theirs[k]}; evaluating with {k}={v} as asked")
    return path, taken


def context_length(model) -> int | None:
    """The model's context in tokens, or None if its config gives none (okd.models.loading.model_context)."""
    from okd.models.loading import model_context

    cfg = getattr(model, "config", None)
    return model_context(cfg) if cfg is not None else None


def shared_context(*models) -> int | None:
    sizes = [c for c in (context_length(m) for m in models if m is not None) if c is not None]
    return min(sizes) if sizes else None


def fit_prompts(prompts: list[list[int]], context: int | None, new_tokens: int, *, bos: int | None = None,
                what: str = "max_new_tokens", log: Callable[[str], None] = print) -> list[list[int]]:
    """Prompts cut from the left (a leading BOS kept) so that prompt + new_tokens <= context."""
    if context is None:
        return prompts
    room = context - new_tokens
    if room < 1:
        raise OkdError(f"{what} {new_tokens} leaves no room for a prompt in the model's context of {context} "
                       f"tokens; use at most {context - 1}")
    cut = sum(len(p) > room for p in prompts)
    if not cut:
        return prompts
    log(f"warning: {cut} of {len(prompts)} prompts cut to their last {room} tokens: the model's context is "
        f"{context} tokens and {what} is {new_tokens}")
    from okd.data import left_cut  # okd.data imports torch; the CLI loads this module without it

    return [left_cut(p, room, bos) for p in prompts]
