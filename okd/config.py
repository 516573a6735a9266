"""Typed run configuration: YAML file + dotted `key=value` overrides, validated by pydantic.

Every section forbids unknown keys, so a typo is an error naming the key rather than a silently
ignored setting. `load_config(path, overrides)` is the one entry point; `Config.to_yaml()` writes the
resolved config into the run directory.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError,
                      field_validator, model_validator)

from okd.errors import OkdError

METHODS = ("sft", "fkd", "rkd", "jsd", "tvd", "seqkd", "imitkd", "gkd", "distillm", "minillm", "okd")
# Methods that generate text while training (seqkd: once, before step 1; the others every step).
GENERATING_METHODS = ("seqkd", "imitkd", "gkd", "distillm", "minillm")
# The distribution divergences of okd.losses.token_divergence (DESIGN.md §1); a method may also train on "ce".
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl")
MODULE_KL_WEIGHTS = ("uniform", "teacher_miss")  # online.kl_weight (okd.losses.closed_form.module_kl_weight)
CROSS_TOKENIZER_METHODS = ("fkd", "rkd", "jsd", "gkd", "okd")  # method.cross_tokenizer: ground-truth KD (gkd at λ 0)

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


def _not_bool(v):
    if isinstance(v, bool):  # pydantic's lax floats take true as 1.0
        raise ValueError("Input should be a valid number")
    return v


# Constrained field types; the messages are what a user sees after "config key 'x.y': ".
# Integers are strict (`true` or 2.5 is refused, not read as 1 or 2); floats refuse booleans; no field
# takes inf or nan (Section.model_config).
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_bool)]
Positive = Annotated[Float, _rule(lambda v: v > 0, "must be > 0")]
Fraction = Annotated[Float, _rule(lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")]
Probability = Annotated[Float, _rule(lambda v: 0.0 < v <= 1.0, "must be > 0 and <= 1")]
DropoutRate = Annotated[Float, _rule(lambda v: 0.0 <= v < 1.0, "must be >= 0 and < 1")]
AtLeastOne = Annotated[Int, _rule(lambda v: v >= 1, "must be >= 1")]
NonNegativeInt = Annotated[Int, _rule(lambda v: v >= 0, "must be >= 0")]
NonNegative = Annotated[Float, _rule(lambda v: v >= 0, "must be >= 0")]
Seed = Annotated[Int, _rule(lambda v: 0 <= v < 2**32, "must be between 0 and 4294967295")]
NonEmpty = Annotated[str, _rule(lambda v: bool(v.strip()), "must not be empty")]


def expand_path(v):
    """$VAR, ${VAR} and ~ in a path, as a shell would expand them (they would otherwise name directories
    literally called '$HOME'); a variable that is not set is an error."""
    if not isinstance(v, str):
        return v
    expanded = os.path.expandvars(v)
    if unset := re.search(r"\$(\{\w+\}|\w+)", expanded):
        raise ValueError(f"{unset.group(0)} is not set in the environment; set it, or write the path out")
    return os.path.expanduser(expanded)


PathText = Annotated[str, AfterValidator(expand_path)]  # a local path (or a hub id / preset name, left as is)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    path: PathText | None = None  # local HF directory, hub id, .gguf file, or preset name
    gguf_file: str | None = None  # file name inside `path` when it is a directory holding a GGUF
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    cache: PathText | None = None  # teacher only: a directory from `okd teacher cache` (frozen-teacher methods)


class DataConfig(Section):
    train: PathText | None = None
    valid: PathText | None = None
    template: Literal["alpaca", "chat", "plain"] = "alpaca"
    # the teacher's template with method.cross_tokenizer; unset: data.template (alpaca where that is chat and
    # the teacher's tokenizer has no chat template)
    teacher_template: Literal["alpaca", "chat", "plain"] | None = None
    max_length: Int = 512  # at least 2 (Config._consistent, with the tokenizer's message)
    max_prompt_length: AtLeastOne = 256  # prompts for generation (on-policy methods, eval)
    skip_invalid: bool = False
    train_limit: AtLeastOne | None = None  # use the first N training examples
    valid_limit: AtLeastOne | None = 256
    group_by_length: bool = True
    pad_to_multiple_of: AtLeastOne | None = None  # pad training batches to a length bucket; None: 64 on CUDA, 1 on CPU


class MethodConfig(Section):
    name: Literal[METHODS] = "okd"  # type: ignore[valid-type]
    divergence: Literal[DIVERGENCES + ("ce",)] | None = None  # type: ignore[valid-type]
    teacher: Literal["online", "frozen", "none"] | None = None
    temperature: Positive = 1.0
    tau_squared: bool = True  # multiply distribution losses by τ² (Hinton)
    beta: Fraction = 0.5  # jsd(β)
    alpha: Fraction = 0.1  # skl/srkl skew
    ce_weight: NonNegative = 0.0  # extra ground-truth CE on the student, for the divergence methods
    # Teacher and student with different tokenizers (okd.crosstok; fkd/rkd/jsd/gkd frozen, okd online): "off" refuses
    # them. hybrid (recommended): the exact method.divergence over the shared vocabulary wherever one token
    # on each side spells the same bytes (everywhere, with identical tokenizers: then it is fkd/rkd/jsd
    # itself), ULD elsewhere; uld: the sorted-probability distance at every aligned group (no shared
    # vocabulary needed, only an approximation of the divergence); span: the groups' chain-rule span
    # likelihoods compared (Bernoulli KL), no next-token distribution.
    cross_tokenizer: Literal["off", "uld", "hybrid", "span"] = "off"
    lmbda: Fraction = 0.5  # gkd: probability of a student-generated batch
    # Sampling inside training (imitkd, gkd, distillm, minillm) and for seqkd's teacher outputs.
    max_new_tokens: AtLeastOne = 128
    gen_temperature: NonNegative = 1.0  # 0: greedy
    top_p: Probability = 1.0
    seqkd_cache: PathText | None = None  # default: <output_dir>/seqkd_cache.jsonl
    seqkd_greedy: bool = True  # seqkd: greedy teacher answers (beam-1 Kim & Rush); false: sample as above
    # distillm (arXiv 2402.03898)
    replay_size: AtLeastOne = 1000
    replay_init_prob: Fraction = 0.0
    replay_max_prob: Fraction = 0.8
    replay_step: Fraction = 0.1
    replay_loss_eps: NonNegative = 0.1  # raise the probability when valid loss >= reference + this (DistiLLM loss_eps)
    # minillm (arXiv 2306.08543)
    mix_alpha: Fraction = 0.2
    clip_eps: Positive = 0.2
    lm_data: PathText | None = None  # plain-text file for the optional language-modelling loss
    lm_weight: NonNegative = 1.0
    ppo_epochs: AtLeastOne = 1

    @field_validator("cross_tokenizer", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @property
    def resolved_divergence(self) -> str:
        if self.name == "sft":  # its loss whatever method.divergence says (a warning names the key as unused)
            return "ce"
        return self.divergence or METHOD_DEFAULTS[self.name][0]

    @property
    def resolved_teacher(self) -> str:
        return self.teacher or METHOD_DEFAULTS[self.name][1]


class OnlineConfig(Section):
    """The OKD online module: LoRA on the teacher's attention query/value projections."""

    rank: AtLeastOne = 32
    lora_alpha: Positive = 32.0  # LoRA scale = lora_alpha / rank
    dropout: DropoutRate = 0.0
    # None: every layer (the paper); k: the top k layers; a fraction f in (0, 1): the top ceil(f·n) of n layers;
    # list: those. Default: the top quarter (docs/results.md: on every layer the module drifts off the data)
    layers: AtLeastOne | Float | list[NonNegativeInt] | None = 0.25  # a float's range: _share_in_range
    target_modules: list[str] | None = None  # None: the architecture's query/value projections
    # module loss = α·KL(q‖p′) + (1−α)·CE_teacher. 0.2, not the paper's 0.5: docs/results.md (at 0.5 the module
    # pulls the teacher off the data and the student loses 0.16 nats at 500 steps; at 0.2 it ties fkd)
    alpha: Fraction = 0.2
    # Beyond the paper: each token's KL(q‖p′) weighted by w. uniform: w = 1; teacher_miss: w = 1 − p′(y), a
    # constant, so the module bends the teacher toward the student only where the teacher itself misses the data
    kl_weight: Literal[MODULE_KL_WEIGHTS] = "uniform"  # type: ignore[valid-type]
    lr: Positive = 1e-4
    weight_decay: NonNegative = 0.0
    # Beyond the paper (docs/results.md): the module alone trains for the first k steps, adapting the teacher
    # toward the initial student before the student moves; and the module's own LR schedule.
    warmup_steps: NonNegativeInt = 0
    lr_schedule: Literal["linear", "constant"] = "linear"  # linear: train.warmup_steps then decay, as the student's

    @field_validator("layers", mode="before")
    @classmethod
    def _share_in_range(cls, v):
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError(f"{v!r} is neither a number of top layers (an integer k >= 1) nor a share of them "
                             "(a fraction > 0 and < 1, e.g. 0.25 for the top quarter)")
        return v

    @field_validator("layers", "target_modules")
    @classmethod
    def _not_empty(cls, v):
        if v is not None and not isinstance(v, (int, float)) and not v:
            raise ValueError("must not be an empty list (leave it unset for the default)")
        return v


class TrainConfig(Section):
    max_steps: AtLeastOne = 100
    batch_size: AtLeastOne = 8
    grad_accum: AtLeastOne = 1
    lr: Positive = 1e-4
    weight_decay: NonNegative = 0.0
    warmup_steps: NonNegativeInt = 0
    max_grad_norm: NonNegative = 1.0
    seed: Seed = 42
    save_every: NonNegativeInt = 0  # 0: only at the end (and every save_every_minutes)
    save_every_minutes: NonNegative = 10.0  # also save when this much time passed since the last save; 0: off
    eval_every: NonNegativeInt = 0  # 0: only at the end (when data.valid is set)
    eval_rouge: bool = False  # also sample answers on data.valid and log ROUGE-L at each eval
    eval_rouge_limit: NonNegativeInt = 32
    # which weights student/ holds: the last step's, or those of the validation with the lowest valid CE /
    # highest valid ROUGE-L (needs train.eval_rouge); MiniLLM picks its tuned teacher by validation ROUGE-L
    select_by: Literal["last", "valid_loss", "valid_rougeL"] = "last"
    log_every: AtLeastOne = 1
    keep_checkpoints: NonNegativeInt = 2
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    trackers: list[Literal["tensorboard", "wandb"]] = []
    loss_chunk_size: AtLeastOne = 512  # tokens per loss chunk (benchmarks/bench_losses.py)
    on_nan: Literal["stop", "skip"] = "stop"
    num_workers: NonNegativeInt = 0
    # torch.compile of the student's and teacher's forwards; auto: reduce-overhead (CUDA graphs) on CUDA, off on
    # CPU, where it does not pay (benchmarks/README.md)
    compile: Literal["off", "default", "reduce-overhead", "auto"] = "auto"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML reads a bare `off` as false


class Config(Section):
    teacher: ModelConfig = ModelConfig()
    student: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    online: OnlineConfig = OnlineConfig()
    train: TrainConfig = TrainConfig()
    output_dir: Annotated[NonEmpty, AfterValidator(expand_path)] = "runs/okd"  # ~/runs/x, $HOME/runs/x: expanded

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        m = self.method
        if self.data.max_length < 2:  # the tokenizer's own message (okd.data.tokenize)
            raise ValueError(f"data.max_length must be at least 2 tokens, got {self.data.max_length}")
        if m.name == "sft" and m.resolved_teacher != "none":
            raise ValueError("method.teacher: sft trains without a teacher; leave it unset")
        if self.train.select_by != "last" and not self.data.valid:
            raise ValueError(f"train.select_by={self.train.select_by} chooses the weights by validation: set "
                             "data.valid, or train.select_by=last")
        if self.train.select_by == "valid_rougeL" and not self.train.eval_rouge:
            raise ValueError("train.select_by=valid_rougeL needs train.eval_rouge=true (the validation ROUGE-L)")
        if m.resolved_teacher == "none" and m.name != "sft":
            raise ValueError(f"method.teacher: method {m.name!r} needs a teacher; leave method.teacher unset "
                             "(or frozen / online) and set teacher.path")
        if m.cross_tokenizer != "off" and (m.name not in CROSS_TOKENIZER_METHODS
                                           or (m.resolved_teacher == "online") != (m.name == "okd")
                                           or (m.name == "gkd" and m.lmbda > 0)):  # (no student samples yet)
            raise ValueError(f"method.cross_tokenizer={m.cross_tokenizer} distils across tokenizers with the "
                             f"ground-truth methods {', '.join(CROSS_TOKENIZER_METHODS)} only (okd online, the others frozen, "
                             f"gkd at method.lmbda=0; not method.name={m.name} with teacher {m.resolved_teacher}"
                             f"{f', lmbda {m.lmbda:g}' if m.name == 'gkd' else ''}); use one of them (gkd: "
                             "method.lmbda=0), or method.cross_tokenizer=off")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree["a"]["b"] = value for "a.b", creating sections; an error if "a" holds a value.

    A mapping given for a key that already holds one is merged into it (`method={name: fkd}` changes
    the method's name and keeps the file's other method keys), key by key, at every depth.
    """
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise OkdError(f"config key {dotted!r} has an empty part; write section.key (e.g. train.lr)")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if child is None:  # `train:` with every key commented out reads as null: an empty section
            child = node[k] = {}
        if not isinstance(child, dict):
            raise OkdError(f"config key {dotted!r}: {k!r} is not a section")
        node = child
    last = keys[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            set_dotted(node[last], str(k), v)
    else:
        node[last] = value


def get_dotted(tree: Any, dotted: str) -> Any:
    """The value at "a.b" of a nested dict or a Config (None where a key is missing)."""
    node = tree
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else getattr(node, k, None)
        if node is None:
            return None
    return node


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# How a changed key matters to a run that already exists (resume, or okd compare finding its directory):
# these make its checkpoints meaningless (other models, another module or method): resuming is refused;
MODEL_KEYS = frozenset({"student.path", "student.gguf_file", "student.revision", "teacher.path", "teacher.gguf_file",
                        "teacher.revision", "method.name", "method.teacher", "online.rank", "online.layers",
                        "online.target_modules"})
# these change how a run is logged or saved, not what it learns: okd compare keeps the run.
LOGGING_KEYS = frozenset({"train.save_every", "train.save_every_minutes", "train.keep_checkpoints", "train.log_every",
                          "train.trackers", "train.num_workers", "output_dir"})


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config trees, with (old, new); a key on one side
    only (an option added or removed since the old run was written) is not a difference."""
    a, b = flatten(old), flatten(new)
    return {k: (a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]}


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
    except Exception:  # noqa: BLE001 - YAMLError, or ValueError from a date like 2024-13-45: the text itself
        value = raw
    return key, value


def _yaml_hint(err: dict, key: str) -> str:
    """What to add to pydantic's message when YAML read a value as something the user did not mean."""
    value = err.get("input")
    if err["type"] in ("string_type", "literal_error") and isinstance(value, (bool, int, float, datetime.date)):
        kind = "a boolean" if isinstance(value, bool) else "a date" if isinstance(value, datetime.date) else "a number"
        text = yaml.safe_dump(value).strip().removesuffix("...").strip()
        return (f"; YAML reads {text} as {kind}: quote it ({key.split('.')[-1]}: '{text}' in the file, "
                f"\"{key}='{text}'\" on the command line)")
    if isinstance(value, bool) and err["type"] in ("int_type", "float_type", "value_error"):
        return (f"; got the boolean {str(value).lower()} (YAML reads true/false/yes/no/on/off as booleans); "
                "give a number")
    if err["type"] == "int_type" and isinstance(value, str) and _is_float(value):
        whole = float(value)
        spelled = f"write {int(whole)}" if whole.is_integer() and abs(whole) < 1e18 else "give an integer"
        return f"; YAML reads {value} as text, not a number: {spelled}"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") and "." not in key and key in SECTION_EXAMPLES:
        return f"; {key} is a section of keys: set one of them, e.g. {SECTION_EXAMPLES[key]}"
    return ""


SECTION_EXAMPLES = {"teacher": "teacher.path=DIR", "student": "student.path=DIR", "data": "data.train=FILE",
                    "method": "method.name=fkd", "online": "online.rank=32", "train": "train.lr=1e-4"}


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unknown_key_hint(key: str) -> str:
    """`(did you mean 'train.lr'?)` for a key given in the wrong section or misspelt."""
    import difflib

    name = key.split(".")[-1]
    known = {f"{s}.{f}" for s, info in Config.model_fields.items()
             if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
             for f in info.annotation.model_fields}
    known |= set(Config.model_fields)
    same_name = sorted(k for k in known if k.split(".")[-1] == name and k != key)
    close = same_name or difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.75)
    return f"did you mean {' or '.join(repr(k) for k in close)}? " if close else ""


def _describe(error: ValidationError) -> str:
    """One line naming each offending key, e.g. "config key 'train.lr': Input should be a valid number"."""
    parts, seen = [], set()
    for err in error.errors():
        # (pydantic names the member of a union it tried, e.g. "function-after[check(), int]": not a key)
        key = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or str(p).isidentifier())
        if key and key in seen:
            continue  # the other members of a union: the first one's message is enough
        seen.add(key)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key ({_unknown_key_hint(key)}check the spelling; see okd train --help for the sections)"
        msg += _yaml_hint(err, key)
        parts.append(f"config key {key!r}: {msg}" if key else msg)
    return " ".join("; ".join(parts).split())  # one line, whatever the values held


def build_config(tree: dict | None = None, overrides: list[str] | None = None) -> Config:
    tree = copy.deepcopy(dict(tree or {}))  # the caller's tree stays as it was
    for section, value in list(tree.items()):
        if value is None and section in Config.model_fields and section != "output_dir":
            tree[section] = {}  # `train:` with every key commented out: an empty section
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise OkdError(_describe(e)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last one
    silently: a second `train:` block would replace the first whole)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: later keys may override it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (the later one would silently win)",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file holding a mapping, or one-line errors naming the file (and the line)."""
    path = Path(path)
    if os.path.isdir(path):  # (os.path: False, not an OSError, for a name too long)
        raise OkdError(f"{what} file {str(path)!r} is a directory; give the YAML file in it")
    if not os.path.isfile(path):
        raise OkdError(f"{what} file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise OkdError(f"{what} file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                       "give a YAML file") from None
    except OSError as e:
        raise OkdError(f"{what} file {str(path)!r} cannot be read ({e.strerror})") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", "") or ""
        why = f": {' '.join(problem.split())}; keep one" if "appears twice" in problem else ""
        raise OkdError(f"{what} file {str(path)!r}{where} is not valid YAML{why}") from None
    except (ValueError, TypeError, RecursionError) as e:  # a date like 2024-13-45, nesting too deep
        raise OkdError(f"{what} file {str(path)!r} is not valid YAML ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(tree, dict):
        raise OkdError(f"{what} file {str(path)!r} must hold a mapping {expected}")
    return tree


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    tree = {} if path is None else read_yaml_mapping(path, "config", "of sections (teacher:, student:, ...)")
    return build_config(tree, overrides)
