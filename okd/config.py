"""Typed run configuration: YAML file + dotted `key=value` overrides, validated by pydantic.

Every section forbids unknown keys, so a typo is an error naming the key rather than a silently
ignored setting. `load_config(path, overrides)` is the one entry point; `Config.to_yaml()` writes the
resolved config into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from okd.errors import OkdError

METHODS = ("sft", "fkd", "rkd", "jsd", "tvd", "seqkd", "imitkd", "gkd", "distillm", "minillm", "okd")
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "ce")

# What each method trains with when `method.divergence` / `method.teacher` are left unset.
METHOD_DEFAULTS: dict[str, tuple[str, str]] = {
    "sft": ("ce", "none"),
    "fkd": ("fkl", "frozen"),
    "rkd": ("rkl", "frozen"),
    "jsd": ("jsd", "frozen"),
    "tvd": ("tvd", "frozen"),
    "seqkd": ("ce", "frozen"),
    "imitkd": ("fkl", "frozen"),
    "gkd": ("jsd", "frozen"),
    "distillm": ("skl", "frozen"),
    "minillm": ("rkl", "frozen"),
    "okd": ("fkl", "online"),
}


def _rule(ok, message: str) -> AfterValidator:
    def check(v):
        if not ok(v):
            raise ValueError(message)
        return v

    return AfterValidator(check)


# Constrained field types; the messages are what a user sees after "config key 'x.y': ".
Positive = Annotated[float, _rule(lambda v: v > 0, "must be > 0")]
Fraction = Annotated[float, _rule(lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")]
AtLeastOne = Annotated[int, _rule(lambda v: v >= 1, "must be >= 1")]
NonNegativeInt = Annotated[int, _rule(lambda v: v >= 0, "must be >= 0")]
NonNegative = Annotated[float, _rule(lambda v: v >= 0, "must be >= 0")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str | None = None  # local HF directory, hub id, .gguf file, or preset name
    gguf_file: str | None = None  # file name inside `path` when it is a directory holding a GGUF
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False


class DataConfig(Section):
    train: str | None = None
    valid: str | None = None
    template: Literal["alpaca", "chat", "plain"] = "alpaca"
    max_length: int = 512
    max_prompt_length: int = 256  # prompts for generation (on-policy methods, eval)
    skip_invalid: bool = False
    train_limit: int | None = None  # use the first N training examples
    valid_limit: int | None = 256
    group_by_length: bool = True


class MethodConfig(Section):
    name: Literal[METHODS] = "okd"  # type: ignore[valid-type]
    divergence: Literal[DIVERGENCES] | None = None  # type: ignore[valid-type]
    teacher: Literal["online", "frozen", "none"] | None = None
    temperature: Positive = 1.0
    tau_squared: bool = True  # multiply distribution losses by τ² (Hinton)
    beta: Fraction = 0.5  # jsd(β)
    alpha: Fraction = 0.1  # skl/srkl skew
    ce_weight: float = 0.0  # extra ground-truth CE on the student, for the divergence methods
    lmbda: Fraction = 0.5  # gkd: probability of a student-generated batch
    # Sampling inside training (imitkd, gkd, distillm, minillm) and for seqkd's teacher outputs.
    max_new_tokens: int = 128
    gen_temperature: float = 1.0
    top_p: float = 1.0
    seqkd_cache: str | None = None  # default: <output_dir>/seqkd_cache.jsonl
    seqkd_greedy: bool = True  # seqkd: greedy teacher answers (beam-1 Kim & Rush); false: sample as above
    # distillm (arXiv 2402.03898)
    replay_size: int = 1000
    replay_init_prob: float = 0.0
    replay_max_prob: float = 0.8
    replay_step: float = 0.1
    replay_loss_eps: float = 0.1  # raise the probability when valid loss >= reference + this (DistiLLM loss_eps)
    # minillm (arXiv 2306.08543)
    mix_alpha: Fraction = 0.2
    clip_eps: float = 0.2
    lm_data: str | None = None  # plain-text file for the optional language-modelling loss
    lm_weight: float = 1.0
    ppo_epochs: int = 1

    @property
    def resolved_divergence(self) -> str:
        return self.divergence or METHOD_DEFAULTS[self.name][0]

    @property
    def resolved_teacher(self) -> str:
        return self.teacher or METHOD_DEFAULTS[self.name][1]


class OnlineConfig(Section):
    """The OKD online module: LoRA on the teacher's attention query/value projections."""

    rank: AtLeastOne = 32
    lora_alpha: float = 32.0  # LoRA scale = lora_alpha / rank
    dropout: float = 0.0
    layers: int | list[int] | None = None  # None: every layer; k: the top k layers; list: those
    target_modules: list[str] | None = None  # None: the architecture's query/value projections
    alpha: Fraction = 0.5  # module loss = α·KL(q‖p′) + (1−α)·CE_teacher
    lr: Positive = 1e-4
    weight_decay: float = 0.0


class TrainConfig(Section):
    max_steps: AtLeastOne = 100
    batch_size: AtLeastOne = 8
    grad_accum: AtLeastOne = 1
    lr: Positive = 1e-4
    weight_decay: NonNegative = 0.0
    warmup_steps: NonNegativeInt = 0
    max_grad_norm: NonNegative = 1.0
    seed: int = 42
    save_every: NonNegativeInt = 0  # 0: only at the end
    eval_every: NonNegativeInt = 0  # 0: only at the end (when data.valid is set)
    eval_rouge: bool = False  # also sample answers on data.valid and log ROUGE-L at each eval
    eval_rouge_limit: NonNegativeInt = 32
    log_every: AtLeastOne = 1
    keep_checkpoints: NonNegativeInt = 2
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    trackers: list[Literal["tensorboard", "wandb"]] = []
    loss_chunk_size: AtLeastOne = 512  # tokens per loss chunk (benchmarks/bench_losses.py)
    on_nan: Literal["stop", "skip"] = "stop"
    num_workers: NonNegativeInt = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # YAML reads a bare `no` as false


class Config(Section):
    teacher: ModelConfig = ModelConfig()
    student: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    online: OnlineConfig = OnlineConfig()
    train: TrainConfig = TrainConfig()
    output_dir: str = "runs/okd"

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        m = self.method
        if m.name == "sft" and m.resolved_teacher != "none":
            raise ValueError("method.teacher: sft trains without a teacher; leave it unset")
        if m.resolved_teacher == "none" and m.name != "sft":
            raise ValueError(f"method.teacher: method {m.name!r} needs a teacher; leave method.teacher unset "
                             "(or frozen / online) and set teacher.path")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise OkdError(f"config key {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` -> ("train.lr", 3e-4); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise OkdError(f"override {text!r} is not of the form key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise OkdError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _describe(error: ValidationError) -> str:
    """One line naming each offending key, e.g. "config key 'train.lr': Input should be a valid number"."""
    parts = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see okd train --help for the sections)"
        parts.append(f"config key {key!r}: {msg}" if key else msg)
    return "; ".join(parts)


def build_config(tree: dict | None = None, overrides: list[str] | None = None) -> Config:
    tree = dict(tree or {})
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise OkdError(_describe(e)) from None


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file holding a mapping, or one-line errors naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise OkdError(f"{what} file {str(path)!r} not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise OkdError(f"{what} file {str(path)!r}{where} is not valid YAML") from None
    if not isinstance(tree, dict):
        raise OkdError(f"{what} file {str(path)!r} must hold a mapping {expected}")
    return tree


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    tree = {} if path is None else read_yaml_mapping(path, "config", "of sections (teacher:, student:, ...)")
    return build_config(tree, overrides)
