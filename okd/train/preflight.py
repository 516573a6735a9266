"""Checks that run before any model loads: whatever the config alone cannot tell.

`preflight(cfg)` reads what is cheap to read (tokenizers, each model's config.json or GGUF header, the
data paths, the output paths, the installed trackers) and raises an `OkdError` with the message the
later failure would have had, or a clearer one, before minutes go into loading models or generating;
it returns warnings for settings that do nothing (one line each, naming the key). The trainer calls it
first; `okd eval` calls `check_output_file` on its `-o` before generating.

`data_warnings(cfg, n_train, world)` is the one check that needs the encoded data (its size).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

from okd.config import GENERATING_METHODS, Config
from okd.errors import OkdError

# train.trackers -> the modules accelerate looks for (any one of them)
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def preflight(cfg: Config) -> list[str]:
    """Raise an OkdError for what would fail later; return warnings (one line each) for what would do
    nothing. Reads tokenizers and model configs, not weights; builds no data preset, reads no record."""
    from okd.methods import method_class

    _required(cfg)
    method_class(cfg)  # method/teacher combinations
    _check_precision(cfg)
    _check_trackers(cfg)
    check_output_dir(cfg.output_dir)
    _check_method_files(cfg)
    _check_cache(cfg)
    _check_models(cfg)  # (a missing model is named before missing data, as the trainer always did)
    _check_data(cfg)
    return unused_settings(cfg) + schedule_warnings(cfg)


def _required(cfg: Config) -> None:
    if not cfg.data.train:
        raise OkdError("data.train is not set; give a JSONL/JSON file, a directory or a preset (okd data list)")
    if not cfg.student.path:
        raise OkdError("student.path is not set")
    if cfg.method.resolved_teacher != "none" and not (cfg.teacher.path or cfg.teacher.cache):
        raise OkdError(f"method {cfg.method.name!r} needs a teacher; set teacher.path (or teacher.cache)")


def _check_cache(cfg: Config) -> None:
    """teacher.cache at a temperature whose tail mass it does not hold: its loss would be wrong (refused here,
    before anything is written; the rest of the cache is checked when it is opened)."""
    import json

    from okd.losses.topk import unstored_temperature

    if not cfg.teacher.cache or cfg.method.resolved_teacher != "frozen":
        return
    try:
        m = json.loads((Path(cfg.teacher.cache).expanduser() / "manifest.json").read_text())
        k, vocab, temps = int(m["top_k"]), int(m["vocab_size"]), [float(t) for t in m["tail_temperatures"]]
    except (OSError, ValueError, KeyError, TypeError):
        return  # missing or not a cache: open_cache names it
    if k < vocab and float(cfg.method.temperature) not in temps:
        raise OkdError(unstored_temperature(cfg.method.temperature, temps, f"teacher.cache {cfg.teacher.cache!r}"))


def _check_precision(cfg: Config) -> None:
    if cfg.train.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise OkdError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")


def _check_trackers(cfg: Config) -> None:
    for tracker in cfg.train.trackers:
        if not any(importlib.util.find_spec(m) is not None for m in TRACKER_MODULES[tracker]):
            extra = ' (or pip install -e ".[tracking]")' if tracker == "tensorboard" else ""
            raise OkdError(f"train.trackers: {tracker} is not installed, so nothing would be logged to it; "
                           f"pip install {tracker}{extra}, or remove it from train.trackers")


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(what: str, path, reason: str, hint: str) -> OkdError:
    return OkdError(f"{what} {str(path)!r} is not writable ({reason}); {hint}")


def check_output_dir(output_dir: str | os.PathLike, what: str = "output_dir") -> None:
    """A directory that exists or can be made, and written to (messages as the trainer's own)."""
    out = Path(output_dir)
    hint = f"choose another {what}"
    if out.exists() and not out.is_dir():
        raise OkdError(f"{what} {str(out)!r} is a file, not a directory; {hint}")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise _not_writable(what, out, os.strerror(20), hint)  # Not a directory
    if not os.access(base, os.W_OK | os.X_OK):
        raise _not_writable(what, out, "Read-only file system" if _read_only(base) else os.strerror(13), hint)


def check_output_file(path: str | os.PathLike, what: str = "-o", example: str = "results.json") -> None:
    """A file that can be written: not a directory, its directory writable (or creatable), the file itself
    writable when it exists. For `okd eval -o` before any generation, and the method's cache files."""
    p = Path(path)
    hint = f"give {what} a writable file path"
    if p.is_dir():
        raise OkdError(f"{what} {str(p)!r} is a directory; give a file path (e.g. {str(p / example)!r})")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise _not_writable(what, p, os.strerror(20), hint)
    if not os.access(base, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise _not_writable(what, p, "Read-only file system" if _read_only(base) else os.strerror(13), hint)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _check_method_files(cfg: Config) -> None:
    m = cfg.method
    if m.name == "seqkd" and m.seqkd_cache:
        check_output_file(Path(m.seqkd_cache).expanduser(), "method.seqkd_cache", "seqkd_cache.jsonl")
    if m.name == "minillm" and m.lm_data:
        path = Path(m.lm_data).expanduser()
        if not path.is_file():
            raise OkdError(f"method.lm_data {str(path)!r} not found; give a plain-text file (or leave it unset)")


def _check_data(cfg: Config) -> None:
    """The data paths exist (a preset or hub id is taken as given); records are read later. Files of a
    split directory that are not read are reported (a warning) by the reader itself."""
    from okd.data.readers import data_files

    for source, split in ((cfg.data.train, "train"), (cfg.data.valid, "valid")):
        if source:
            data_files(source, split)


def _vocab_rows(model_config) -> int | None:
    config = getattr(model_config, "text_config", None) or model_config
    rows = getattr(config, "vocab_size", None)
    return rows if isinstance(rows, int) and rows > 0 else None


def _check_models(cfg: Config) -> None:
    """Tokenizers first (the errors the trainer would give), then each model's config: its embedding
    against its tokenizer, its context against the lengths, the online module's layers."""
    from okd.data.templates import check_template
    from okd.models.loading import check_context, check_vocab_rows, load_model_config, load_tokenizer
    from okd.models.online import layer_indices

    mode = cfg.method.resolved_teacher
    roles = [("student", cfg.student)]
    if mode != "none" and not cfg.teacher.cache:
        roles.append(("teacher", cfg.teacher))
    tokenizers = {role: load_tokenizer(mc) for role, mc in roles}
    if "teacher" in tokenizers:
        _check_tokenizer_pair(cfg, tokenizers["teacher"], tokenizers["student"])
    check_template(cfg.data.template, tokenizers["student"])
    d, m = cfg.data, cfg.method
    # training prompts come from the training features (at most data.max_length - 1 tokens: a response has one
    # at least), cut to data.max_prompt_length; train.eval_rouge's prompts are fitted to the context as it samples
    generates = m.name in GENERATING_METHODS
    prompt_bound = min(d.max_prompt_length, d.max_length - 1)
    for role, mc in roles:
        model_config = load_model_config(mc)
        rows = _vocab_rows(model_config)
        if rows is not None:
            check_vocab_rows(rows, tokenizers[role], role, "embedding (vocab_size in its config)")
        check_context(model_config, d.max_length, f"data.max_length={d.max_length}", role, "lower data.max_length")
        if generates:
            what = ("data.max_prompt_length" if prompt_bound == d.max_prompt_length
                    else f"the longest prompt data.max_length={d.max_length} allows")
            check_context(model_config, prompt_bound + m.max_new_tokens,
                          f"generating, {what} + method.max_new_tokens = {prompt_bound} + {m.max_new_tokens}", role,
                          "lower their sum")
        if role == "teacher" and mode == "online":
            layer_indices(SimpleNamespace(config=model_config), cfg.online)


def _check_tokenizer_pair(cfg: Config, teacher_tok, student_tok) -> None:
    """The same vocabulary (else the refusal names method.cross_tokenizer); across tokenizers: fast ones
    (offsets), an EOS on each side, and the teacher's template."""
    from okd.crosstok.data import CROSS_HINT, check_fast, teacher_template
    from okd.data.templates import check_template
    from okd.models.loading import check_same_vocab

    if cfg.method.cross_tokenizer == "off":
        check_same_vocab(teacher_tok, student_tok, CROSS_HINT)
        return
    for tok, role in ((teacher_tok, "teacher"), (student_tok, "student")):
        check_fast(tok, role)
        if tok.eos_token_id is None:
            raise OkdError(f"the {role}'s tokenizer has no EOS token; set its eos_token (responses end with it)")
    template = teacher_template(cfg, teacher_tok)
    if cfg.data.teacher_template is None and template != cfg.data.template:
        import logging

        logging.getLogger("okd.train.trainer").warning(
            "data.template=chat: the teacher's tokenizer has no chat template, so the teacher reads the alpaca "
            "template (set data.teacher_template to choose)")
    check_template(template, teacher_tok)


def _unused_keys(cfg: Config) -> dict[str, bool]:
    """Dotted key -> whether this method uses it (the keys only some methods read)."""
    m = cfg.method
    name, div, mode = m.name, m.resolved_divergence, m.resolved_teacher
    sampling = name in ("imitkd", "gkd", "distillm") or (name == "seqkd" and not m.seqkd_greedy)
    used = {
        "method.divergence": name != "sft" or m.divergence == "ce",
        "method.beta": div == "jsd",
        "method.alpha": div in ("skl", "srkl"),
        "method.lmbda": name == "gkd",
        "method.max_new_tokens": name in GENERATING_METHODS or cfg.train.eval_rouge,
        "method.gen_temperature": sampling or name == "minillm",
        "method.top_p": sampling,
        "method.seqkd_cache": name == "seqkd",
        "method.seqkd_greedy": name == "seqkd",
        "data.teacher_template": m.cross_tokenizer != "off",
    }
    # sft trains on CE alone; minillm's reverse KL is at temperature 1 with its own loss; seqkd with "ce"
    # trains on the teacher's answers only
    distribution_loss = name not in ("sft", "minillm") and not (name == "seqkd" and div == "ce")
    for key in ("temperature", "tau_squared", "ce_weight"):
        used[f"method.{key}"] = distribution_loss
    for key in ("replay_size", "replay_init_prob", "replay_max_prob", "replay_step", "replay_loss_eps"):
        used[f"method.{key}"] = name == "distillm"
    for key in ("mix_alpha", "clip_eps", "lm_data", "lm_weight", "ppo_epochs"):
        used[f"method.{key}"] = name == "minillm"
    for key in type(cfg.online).model_fields:
        used[f"online.{key}"] = mode == "online"
    return used


def unused_settings(cfg: Config) -> list[str]:
    """One warning naming the keys set away from their defaults that this method never reads."""
    from okd.config import get_dotted

    defaults = Config()
    unused = [k for k, is_used in _unused_keys(cfg).items()
              if not is_used and get_dotted(cfg, k) != get_dotted(defaults, k)]
    if not unused:
        return []
    m = cfg.method
    return [f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing for method.name={m.name} "
            f"(divergence {m.resolved_divergence}, teacher {m.resolved_teacher}): ignored; remove "
            f"{'it' if len(unused) == 1 else 'them'}, or choose the method that uses {'it' if len(unused) == 1 else 'them'}"]


def schedule_warnings(cfg: Config) -> list[str]:
    """Step-count settings that never take effect within train.max_steps, or need data.valid."""
    t, out = cfg.train, []
    if not cfg.data.valid:
        for key, value in (("train.eval_every", t.eval_every), ("train.eval_rouge", t.eval_rouge)):
            if value:
                out.append(f"{key}={str(value).lower()} does nothing without data.valid (validation needs it); "
                           f"set data.valid, or unset {key}")
    elif t.eval_every > t.max_steps:
        out.append(f"train.eval_every={t.eval_every} is more than train.max_steps={t.max_steps}: the only "
                   "validation is the one at the end")
    if t.eval_rouge and cfg.data.valid and t.eval_rouge_limit == 0:
        out.append("train.eval_rouge=true does nothing with train.eval_rouge_limit=0; raise the limit")
    if t.save_every and t.save_every >= t.max_steps:
        out.append(f"train.save_every={t.save_every} is not below train.max_steps={t.max_steps}: no checkpoint "
                   "before the final one (besides train.save_every_minutes)")
    if t.warmup_steps >= t.max_steps:
        out.append(f"train.warmup_steps={t.warmup_steps} is not below train.max_steps={t.max_steps}: the learning "
                   f"rate never reaches train.lr={t.lr}")
    return out


def data_warnings(cfg: Config, n_train: int, world: int = 1) -> list[str]:
    """After the data is encoded: batches larger than the data (each step then takes all of it, a
    smaller batch than asked, or sees examples twice within one step)."""
    t = cfg.train
    per_step = t.batch_size * world
    procs = f" x {world} processes" if world > 1 else ""
    if n_train < per_step:
        return [f"train.batch_size={t.batch_size}{procs} is more than the {n_train} training examples: every step "
                f"trains on batches of {n_train}; lower train.batch_size (or give more data)"]
    if n_train < per_step * t.grad_accum:
        return [f"train.batch_size={t.batch_size}{procs} x train.grad_accum={t.grad_accum} is more than the "
                f"{n_train} training examples: each step sees some examples twice; lower train.grad_accum"]
    return []
