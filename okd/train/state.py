"""A run's bookkeeping: its output directory, its counters, its data order, its metrics file.

Everything here is plain data or files; nothing touches a model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from okd.config import MODEL_KEYS, Config, config_diff
from okd.errors import OkdError
from okd.train.checkpoint import checkpoint_dirs

log = logging.getLogger("okd.train.trainer")  # messages read as the trainer's


@dataclasses.dataclass
class RunState:
    """The counters a checkpoint saves (state.json) and a resumed run continues from.

    elapsed_s: wall clock of the loop; overhead_s: its validations and checkpoint saves; train_s: the
    rest, taken at each step's end (not elapsed - overhead later: the last validation adds to overhead only).
    """

    step: int = 0
    position: int = 0  # micro-batches consumed (per process)
    tokens: int = 0
    generated_tokens: int = 0
    elapsed_s: float = 0.0
    overhead_s: float = 0.0
    train_s: float = 0.0
    skipped: int = 0
    num_processes: int = 1
    data_sha256: str | None = None  # the encoded training data (okd.train.setup.data_sha256)
    commands: list = dataclasses.field(default_factory=list)  # every okd command that trained this run, in order

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":  # checkpoints written before a field existed lack it
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RunFinished(Exception):
    """`--resume` of a run that already reached its train.max_steps: nothing to do (not an error: a job
    script that resumes after a pre-emption may find its run just finished)."""


def _step_of(checkpoint: Path) -> int:
    """The step a checkpoint holds (its directory's name: checkpoint_dirs lists step-NNNNNNN only)."""
    return int(checkpoint.name.removeprefix("step-"))


def prepare_output_dir(cfg: Config, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    ckpts = checkpoint_dirs(out / "checkpoints")
    finished = (out / "summary.json").is_file()
    if (ckpts or finished) and not resume:
        raise OkdError(f"output_dir {str(out)!r} already holds a run; pass --resume to continue it or choose "
                       "another output_dir (okd never overwrites a run)")
    if out.exists() and not out.is_dir():
        raise OkdError(f"output_dir {str(out)!r} is a file, not a directory; choose another output_dir")
    max_steps = cfg.train.max_steps
    if resume and ckpts and _step_of(ckpts[-1]) > max_steps:
        step = _step_of(ckpts[-1])
        raise OkdError(f"cannot resume {str(out)!r} with train.max_steps={max_steps}: its checkpoint is at step {step}, "
                       f"beyond it; set train.max_steps to at least {step} (the run's own: "
                       f"{_old_max_steps(out)}), or choose another output_dir")
    if resume and finished:
        steps = _step_of(ckpts[-1]) if ckpts else _summary_steps(out)
        if steps == max_steps:
            raise RunFinished(f"the run in {str(out)!r} is finished (step {steps} of train.max_steps={max_steps}); "
                              "nothing to do (raise train.max_steps to train further)")
        if not ckpts:
            raise OkdError(f"output_dir {str(out)!r} holds a finished run ({steps} steps: student/, summary.json) and "
                           "no checkpoint to continue it from, so --resume would train over it from the start; okd "
                           "never overwrites a run: choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: launched processes probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OkdError(f"output_dir {str(out)!r} is not writable ({e.strerror}); choose another output_dir") from None
    return out


def _summary_steps(out: Path) -> int | None:
    try:
        return json.loads((out / "summary.json").read_text()).get("steps")
    except (OSError, ValueError, AttributeError):
        return None


def _old_max_steps(out: Path):
    import yaml

    try:
        return ((yaml.safe_load((out / "config.yaml").read_text()) or {}).get("train") or {}).get("max_steps", "?")
    except (OSError, yaml.YAMLError, AttributeError):
        return "?"


def check_resumed_config(out: Path, cfg: Config) -> list[str]:
    """Compare the config of the run in `out` with `cfg`: an error on okd.config.MODEL_KEYS, a warning
    on others. Returns the changed keys. `output_dir` is not compared (the same directory may be
    spelled differently); `method.teacher` is compared as resolved (unset means the method's default)."""
    import yaml
    from pydantic import ValidationError

    path = out / "config.yaml"
    if not path.is_file() or not checkpoint_dirs(out / "checkpoints"):
        return []  # nothing to continue: the run starts over with this config
    try:
        old = Config.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError, TypeError):
        log.warning("could not read %s to compare it with this config; resuming anyway", path)
        return []
    before, after = old.model_dump(mode="json"), cfg.model_dump(mode="json")
    before["method"]["teacher"], after["method"]["teacher"] = old.method.resolved_teacher, cfg.method.resolved_teacher
    changed = {k: v for k, v in config_diff(before, after).items() if k != "output_dir"}
    fixed = [k for k in changed if k in MODEL_KEYS]
    if fixed:
        raise OkdError("cannot resume with a changed " + ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})"
                                                                  for k in fixed)
                       + f": the checkpoints in {str(out)!r} belong to the old setting; resume with the original "
                       "config or choose another output_dir")
    if changed:
        log.warning("resuming with a changed config: %s; the result will differ from an uninterrupted run",
                    ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items()))
    return list(changed)


class BatchOrder:
    """Global micro-batches of indices for epoch e: a seeded permutation (length-grouped if asked)."""

    def __init__(self, lengths: list[int], global_batch: int, seed: int, group_by_length: bool):
        self.lengths, self.global_batch, self.seed, self.group = lengths, global_batch, seed, group_by_length
        n = len(lengths)
        # drop the ragged tail so every process gets a full shard (unless the data is one batch)
        self.per_epoch = max(1, n // global_batch)
        self._epoch, self._order = None, None

    def batch(self, position: int) -> list[int]:
        from okd.data import length_grouped_order

        epoch, i = divmod(position, self.per_epoch)
        if epoch != self._epoch:
            seed = self.seed + epoch
            if self.group:
                self._order = length_grouped_order(self.lengths, self.global_batch, seed)
            else:
                g = torch.Generator().manual_seed(seed)
                self._order = torch.randperm(len(self.lengths), generator=g).tolist()
            self._epoch = epoch
        return self._order[i * self.global_batch:(i + 1) * self.global_batch]


class MetricsLog:
    """metrics.jsonl (main process only): records logged after the checkpoint a run resumes from
    are dropped first, so the file has no duplicate steps."""

    def __init__(self, path: Path, step: int, enabled: bool):
        self.path, self.enabled, self._file = path, enabled, None
        if enabled:
            truncate_metrics(path, step)
            self._file = open(path, "a")

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (or by a run killed before its first one)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass  # a line cut by a crash
    path.write_text("".join(line + "\n" for line in keep))
