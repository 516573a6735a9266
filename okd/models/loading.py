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
    if path.is_file():
        if path.suffix == ".gguf":
            return str(path.parent), path.name
        raise OkdError(f"model path {spec!r} is a file but not a .gguf; give an HF model directory, a .gguf file, a hub id or a preset (okd models list)")
    if path.is_dir():
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
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise OkdError(f"model {spec!r} not found: not a local path, a preset (okd models list) or a hub id (org/name)")
    return spec, gguf_file


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source, gguf = resolve_model_source(cfg.path, cfg.gguf_file)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if gguf:
        kwargs["gguf_file"] = gguf
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

    source, gguf = resolve_model_source(cfg.path, cfg.gguf_file)
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=DTYPES[cfg.dtype])
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file raises anything (SafetensorError, ...)
        raise OkdError(f"could not load a causal LM from {cfg.path!r}: {_first_line(e)}") from None
    if gguf:
        # The GGUF loader marks the model quantised; it is plain fp32 now and must save as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.eval()


def check_compatible(teacher_tok, student_tok, teacher, student) -> int:
    """Return the shared vocabulary size V, or raise if teacher and student tokenize differently.

    A model whose output matrix is padded beyond the tokenizer (common for speed) is fine: logits
    past V never correspond to a token and are dropped by the losses.
    """
    vt, vs = teacher_tok.get_vocab(), student_tok.get_vocab()
    if vt != vs:
        only_t = len(set(vt) - set(vs))
        only_s = len(set(vs) - set(vt))
        moved = sum(1 for k in set(vt) & set(vs) if vt[k] != vs[k])
        raise OkdError(
            f"teacher and student tokenizers differ ({len(vt)} vs {len(vs)} tokens; {only_t} only in the "
            f"teacher, {only_s} only in the student, {moved} with other ids); KD needs the same vocabulary"
        )
    vocab = len(teacher_tok)
    for role, model in (("teacher", teacher), ("student", student)):
        rows = output_weight(model).shape[0]
        if rows < vocab:
            raise OkdError(f"{role} output layer has {rows} rows but the tokenizer has {vocab} tokens")
    return vocab


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

    `logits_to_keep=1` keeps the model from projecting every position onto the vocabulary: the
    losses do that in chunks, for the scored positions only.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
