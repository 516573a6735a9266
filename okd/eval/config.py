"""The evaluation settings of `okd eval` (and of `okd compare`'s `eval:` section, which extends them).

One pydantic model, validated like the training config (okd/config.py): unknown keys are errors, and
a bad value is a one-line OkdError naming the key. The defaults are `okd eval`'s: sampling at
temperature 1, top-p 1, top-k off (DESIGN §2), seeds 0..S-1.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from okd.errors import OkdError


def _rule(ok, message: str) -> AfterValidator:
    def check(v):
        if v is not None and not ok(v):
            raise ValueError(message)
        return v

    return AfterValidator(check)


AtLeastOne = Annotated[int, _rule(lambda v: v >= 1, "must be >= 1")]
NonNegativeInt = Annotated[int, _rule(lambda v: v >= 0, "must be >= 0 (0 = off)")]
TopP = Annotated[float, _rule(lambda v: 0 < v <= 1, "must be in (0, 1] (1 = off)")]
Template = Literal["alpaca", "chat", "plain"]
DType = Literal["float32", "bfloat16", "float16", "auto", "fast"]  # fast: okd.precision.resolve_dtype


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ExposureConfig(_Settings):
    """Exposure bias (ExAccErr, teacher as oracle): computed when a teacher is given."""

    samples: AtLeastOne = 4  # sampled prefixes per prompt and model
    max_len: AtLeastOne = 64  # curve length in tokens
    length: AtLeastOne = 32  # l of the headline ExAccErr(l)
    prompts: AtLeastOne | None = None  # the first N prompts only (None: all)

    @field_validator("length")
    @classmethod
    def _within_curve(cls, v: int, info: ValidationInfo) -> int:
        max_len = info.data.get("max_len")
        if max_len is not None and v > max_len:
            raise ValueError(f"must be between 1 and max_len ({max_len})")
        return v


class EvalConfig(_Settings):
    """How `run_eval` samples and scores: decoding, lengths, batch, dtype, exposure bias."""

    split: str = "test"  # split for presets and directories
    template: Template = "alpaca"
    seeds: AtLeastOne = 5  # sampled runs, seeds 0..S-1
    greedy: bool = False  # one greedy pass instead of the seeds
    temperature: float = 1.0
    top_p: TopP = 1.0
    top_k: NonNegativeInt = 0
    max_new_tokens: AtLeastOne = 128
    max_prompt_length: AtLeastOne = 256  # prompt tokens kept, from the right
    max_length: AtLeastOne = 512  # prompt + reference cap for the teacher-forced stats
    limit: AtLeastOne | None = None  # the first N examples of each set
    batch_size: AtLeastOne = 16
    dtype: DType = "float32"
    # ROUGE-L's tokenizer: rouge-score's (the paper's: ASCII letters and digits only) or okd.eval.rouge's Unicode one
    rouge_tokenizer: Literal["default", "unicode"] = "default"
    exposure: ExposureConfig = ExposureConfig()

    @field_validator("temperature")
    @classmethod
    def _sampling_temperature(cls, v: float, info: ValidationInfo) -> float:
        if not info.data.get("greedy") and not v > 0:
            raise ValueError("must be > 0 for sampling (greedy decoding takes the argmax instead)")
        return v

    def results_settings(self) -> dict:
        """The `settings` block of a results JSON."""
        return dict(split=self.split, template=self.template, seeds=None if self.greedy else self.seeds,
                    greedy=self.greedy, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens, max_prompt_length=self.max_prompt_length,
                    limit=self.limit, batch_size=self.batch_size, rouge_tokenizer=self.rouge_tokenizer)


def describe_errors(error: ValidationError, name: Callable[[str], str], unknown: str) -> str:
    """One line naming each bad key: `name(dotted key)`: message; `unknown` for a key not in the schema."""
    parts = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = unknown if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        parts.append(f"{name(key)}: {msg}" if key else msg)
    return "; ".join(parts)


def build_eval_config(tree: dict[str, Any] | None = None, *,
                name: Callable[[str], str] = lambda key: f"eval setting {key!r}") -> EvalConfig:
    """An EvalConfig from a (nested) mapping, or an OkdError naming the bad key through `name`."""
    try:
        return EvalConfig.model_validate(tree or {})
    except ValidationError as e:
        raise OkdError(describe_errors(e, name, "unknown key")) from None
