"""Loading teacher and student: local HF directory, hub id, `.gguf` file, or named preset.

Also the tokenizer compatibility check between teacher and student, and the helpers the losses use
to reach a causal LM's final hidden states and output matrix (so logits can be computed in chunks).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from okd.config import ModelConfig
from okd.errors import OkdError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_source(spec: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a user's model spec to (path or hub id, gguf file name or None)."""
    if not spec:
        raise OkdError("no model path given (set teacher.path / student.path)")
    path = Path(os.path.expanduser(spec))
    if os.path.isfile(path):  # (os.path: False, not an OSError, for a name too long)
        if path.suffix == ".gguf":
            return str(path.parent), path.name
        raise OkdError(f"model path {spec!r} is a file but not a .gguf; give an HF model directory, a .gguf file, a hub id or a preset (okd models list)")
    if os.path.isdir(path):
        if gguf_file or (path / "config.json").is_file():
            return str(path), gguf_file
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        raise OkdError(f"directory {spec!r} holds no model (no config.json or single .gguf file); point to an HF model directory")
    try:
        from okd.models.presets import resolve_model_preset
    except ImportError:  # presets module not available
        resolve_model_preset = None
    if resolve_model_preset is not None:
        preset = resolve_model_preset(spec)
        if preset is not None:
            return str(preset), None
    if not looks_like_hub_id(spec):
        local = "" if spec.startswith(("/", "~")) else f" (nothing at {spec!r} relative to {os.getcwd()})"
        raise OkdError(f"model {spec!r} not found: not a local path, a preset (okd models list) or a hub id "
                       f"(org/name){local}")
    return spec, gguf_file


# What names a local file rather than a hub repository (`org/name`, where name may hold dots: Qwen2.5-0.5B).
LOCAL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json", ".yaml", ".yml", ".txt")


def looks_like_hub_id(spec: str) -> bool:
    """`org/name` that is not meant as a local path: not absolute, relative (./, ../, ~), a file name
    (model.gguf, ...), and not below a local directory that exists (runs/okd, with runs/ here): those
    would be looked up on the hub, to fail after its retries with a message about the network."""
    import re

    if spec.count("/") != 1 or spec.startswith((".", "/", "~")) or spec.endswith("/"):
        return False
    if spec.lower().endswith(LOCAL_SUFFIXES) or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return False
    if ".." in spec or "--" in spec:  # the hub refuses these in repository ids
        return False
    return not Path(spec.split("/")[0]).is_dir()


def _source_and_kwargs(cfg: ModelConfig) -> tuple[str, dict]:
    """What every from_pretrained of this model takes: the resolved source and revision/trust/GGUF file."""
    source, gguf = resolve_model_source(cfg.path, cfg.gguf_file)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if gguf:
        kwargs["gguf_file"] = gguf
    return source, kwargs


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source, kwargs = _source_and_kwargs(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file raises anything (struct.error, ...)
        raise OkdError(f"could not load a tokenizer from {cfg.path!r}: {_first_line(e)}; is it a complete "
                       "model directory or GGUF file?") from None
    if tok.pad_token_id is None:  # decoder-only models often ship without one; pads are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0][:300].rstrip(".") if text else ""
    if isinstance(e, (OSError, ValueError)) and first:
        return first
    kind = type(e).__name__
    kind = f"{type(e).__module__}.{kind}" if kind == "error" else kind  # struct.error, zlib.error, ...
    return f"{kind}: {first}".rstrip(": ")


def load_model(cfg: ModelConfig):
    """An AutoModelForCausalLM in eval mode; GGUF weights are dequantised to plain tensors."""
    from transformers import AutoModelForCausalLM

    source, kwargs = _source_and_kwargs(cfg)
    kwargs["dtype"] = DTYPES[cfg.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file raises anything (SafetensorError, ...)
        raise OkdError(f"could not load a causal LM from {cfg.path!r}: {_first_line(e)}") from None
    if "gguf_file" in kwargs:
        # The GGUF loader marks the model quantised; it is plain fp32 now and must save as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.eval()


def check_same_vocab(teacher_tok, student_tok, remedy: str = "") -> None:
    """Raise if teacher and student tokenize differently (needs the tokenizers only); `remedy` ends the
    message (training names method.cross_tokenizer there)."""
    vt, vs = teacher_tok.get_vocab(), student_tok.get_vocab()
    if vt != vs:
        only_t = len(set(vt) - set(vs))
        only_s = len(set(vs) - set(vt))
        moved = sum(1 for k in set(vt) & set(vs) if vt[k] != vs[k])
        raise OkdError(
            f"teacher and student tokenizers differ ({len(vt)} vs {len(vs)} tokens; {only_t} only in the "
            f"teacher, {only_s} only in the student, {moved} with other ids); KD needs the same vocabulary"
            + (f": {remedy}" if remedy else "")
        )


def check_compatible(teacher_tok, student_tok, teacher, student, remedy: str = "") -> int:
    """Return the shared vocabulary size V, or raise if teacher and student tokenize differently.

    A model whose output matrix is padded beyond the tokenizer (common for speed) is fine: logits
    past V never correspond to a token and are dropped by the losses.
    """
    check_same_vocab(teacher_tok, student_tok, remedy)
    vocab = len(teacher_tok)
    for role, model in (("teacher", teacher), ("student", student)):
        rows = output_weight(model).shape[0]
        if rows < vocab:
            raise OkdError(f"{role} output layer has {rows} rows but the tokenizer has {vocab} tokens")
    return vocab


def load_model_config(cfg: ModelConfig):
    """The model's transformers config (config.json, or a GGUF file's header) without its weights."""
    from transformers import AutoConfig

    source, kwargs = _source_and_kwargs(cfg)
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file raises anything
        raise OkdError(f"could not read the model config of {cfg.path!r}: {_first_line(e)}; is it a complete "
                       "model directory or GGUF file?") from None


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")


def _context_entry(model_config) -> tuple[str, int] | None:
    config = getattr(model_config, "text_config", None) or model_config
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def model_context(model_config) -> int | None:
    """The longest sequence the model's positions cover (None where its config does not say)."""
    entry = _context_entry(model_config)
    return entry[1] if entry else None


def check_context(model_config, length: int, what: str, role: str = "model", fix: str = "lower it") -> None:
    """Raise if `length` tokens (described by `what`, e.g. "data.max_length=1024") exceed the context of
    the model: positions past it are out of range (an IndexError in the middle of training) or untrained.
    `fix` says what to change (e.g. "lower data.max_length")."""
    entry = _context_entry(model_config)
    if entry is not None and length > entry[1]:
        raise OkdError(f"{what} needs {length} positions but the {role}'s context is {entry[1]} tokens "
                       f"({entry[0]} in its config); {fix} to at most {entry[1]}")


def check_vocab_rows(rows: int, tokenizer, role: str = "model", what: str = "embedding") -> None:
    """Raise if a model's embedding (or output layer) has fewer rows than the tokenizer has tokens: the
    ids past it would index out of range (an IndexError at the first batch that holds one)."""
    tokens = len(tokenizer)
    if rows < tokens:
        raise OkdError(f"the {role}'s {what} has {rows} rows but its tokenizer has {tokens} tokens; ids "
                       f"{rows}..{tokens - 1} would be out of range: use the tokenizer the {role} was trained "
                       "with, or resize its embeddings (model.resize_token_embeddings) and save it again")


def check_embeddings(model, tokenizer, role: str = "model") -> None:
    """check_vocab_rows for a loaded model's input embedding and output layer."""
    lm = causal_lm(model)
    for what, layer in (("input embedding", lm.get_input_embeddings()), ("output layer", lm.get_output_embeddings())):
        weight = getattr(layer, "weight", None)
        if weight is not None and weight.dim() == 2 and weight.shape[0] > 0:  # (0 rows: partitioned by ZeRO-3)
            check_vocab_rows(weight.shape[0], tokenizer, role, what)


def causal_lm(model):
    """The underlying *ForCausalLM of a model that may be wrapped by peft or accelerate/DDP."""
    while True:
        if hasattr(model, "module") and (not hasattr(model, "get_output_embeddings") or _is_deepspeed_engine(model)):
            model = model.module  # DDP / FSDP wrapper; a DeepSpeed engine (it forwards attributes to its module)
            continue
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()  # peft wrapper; LoRA layers stay injected in-place
            continue
        return model


def _is_deepspeed_engine(model) -> bool:
    import sys

    ds = sys.modules.get("deepspeed")  # never imported just to ask
    engine = getattr(ds, "DeepSpeedEngine", None) if ds is not None else None
    return engine is not None and isinstance(model, engine)


def output_weight(model) -> torch.Tensor:
    return causal_lm(model).get_output_embeddings().weight


def final_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    """Final (post-norm) hidden states [B, T, H], via the wrapper's forward so DDP/peft hooks run.

    The decoder's own output (its last_hidden_state, taken by a forward hook on the base model) rather
    than `output_hidden_states=True`, which keeps every layer's states and breaks a compiled graph at
    each layer; `logits_to_keep=1` keeps the model from projecting every position onto the vocabulary:
    the losses do that in chunks, for the scored positions only. `attention_mask=None` is exact for
    right-padded batches (the causal mask alone), and skips the padding-mask work.
    """
    if _is_fsdp(model) or _is_deepspeed_engine(model):  # their hooks expect the outputs their forward returns
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    logits_to_keep=1, use_cache=False)
        return out.hidden_states[-1]
    base = causal_lm(model).base_model
    captured = []
    handle = base.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return captured[-1]


def _is_fsdp(model) -> bool:
    """Whether an FSDP wrapper is on the way to the model (accelerate wraps the outside; walking the
    wrapper chain, not every submodule: this runs at every forward of the step)."""
    while model is not None:
        if type(model).__name__ == "FullyShardedDataParallel":
            return True
        model = getattr(model, "module", None)
    return False


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
