"""What every entry point shares (the `okd` command, okd.api, the callable okd.train package): configs
from dicts, paths or Configs, and quiet libraries.

It sits below okd.train (only okd.config and okd.errors are imported), so the training package can make
itself callable with `TrainPackage` (`okd.train(config)`, DESIGN §6) without an import cycle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

from okd.errors import OkdError

DEEPSPEED_NOTICES = ("Setting accelerator to CPU",)


def _deepspeed_filter(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in DEEPSPEED_NOTICES)


def quiet_libraries() -> None:
    """Keep library chatter out of okd's output for the rest of the process (the `okd` command's setting):
    transformers' loading bars and notes, peft's and torch's warnings, DeepSpeed's accelerator notice.
    Imports no heavy library: the DeepSpeed logger is filtered before DeepSpeed exists."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    ds = logging.getLogger("DeepSpeed")  # deepspeed.utils.logging sets its level, not its filters
    if _deepspeed_filter not in ds.filters:
        ds.addFilter(_deepspeed_filter)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def libraries_quiet(verbose: bool = False) -> Iterator[None]:
    """quiet_libraries() for the duration of a call; transformers' settings restored afterwards."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        quiet_libraries()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()


def _overrides(overrides: list[str] | dict | None) -> list[str]:
    """Dotted overrides as "key=value" strings (a dict's values written as YAML would read them)."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        import json

        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(o) for o in overrides]


def load_config(config: Any = None, overrides: list[str] | dict | None = None):
    """An okd Config from a dict (okd train's YAML tree), a YAML path, or a Config, plus dotted overrides;
    OkdError naming the bad key otherwise."""
    from okd.config import Config, build_config
    from okd.config import load_config as load_yaml

    if config is None or isinstance(config, dict):
        return build_config(config or {}, _overrides(overrides))
    if isinstance(config, (str, os.PathLike)):
        return load_yaml(config, _overrides(overrides))
    if isinstance(config, Config):
        return build_config(config.model_dump(mode="json"), _overrides(overrides))
    raise OkdError(f"config must be a dict, a YAML path or an okd Config, not {type(config).__name__}")


class TrainPackage(types.ModuleType):
    """okd/train/ as a callable module: `okd.train(config, overrides, resume=, progress=, verbose=)` is
    okd.api.train (config: a dict, YAML path or Config); the module's `train` is the trainer itself."""

    def __call__(self, config: Any, overrides: list[str] | dict | None = None, *, resume: bool = False,
                 progress: bool = True, verbose: bool = False) -> Path:
        cfg = load_config(config, overrides)
        with libraries_quiet(verbose):
            return Path(self.train(cfg, resume=resume, progress=progress))
