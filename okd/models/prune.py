"""Depth pruning: a student made of some of the teacher's layers (DistilBERT / Minitron style).

The student keeps the teacher's embeddings, final norm and output matrix and a subset of its
decoder layers, renumbered 0..k-1. It is rebuilt from a config with the smaller layer count (so
everything derived from the config at construction time, such as each attention's `layer_idx` for
the KV cache and per-layer `layer_types`, is consistent) and the kept weights are copied in.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path

import torch

from okd.errors import OkdError

STRATEGIES = ("uniform", "first", "last")

# Where the decoder layers live, per family: Llama/Qwen2/Mistral/..., GPT-2, OPT, GPT-NeoX.
_LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")


def select_layers(n_layers: int, k: int, strategy: str = "uniform") -> list[int]:
    """Indices of the k layers to keep out of n_layers.

    uniform: evenly spaced including the first and last layer, round(linspace(0, n-1, k)) with
    halves rounded up; first: the bottom k; last: the top k.
    """
    if not 1 <= k <= n_layers:
        raise OkdError(f"cannot keep {k} layers of a {n_layers}-layer model; choose 1..{n_layers}")
    if strategy == "uniform":
        if k == 1:
            return [0]
        step = (n_layers - 1) / (k - 1)
        # step >= 1, so the rounded positions are distinct and increasing.
        return [int(i * step + 0.5) for i in range(k)]
    if strategy == "first":
        return list(range(k))
    if strategy == "last":
        return list(range(n_layers - k, n_layers))
    raise OkdError(f"unknown layer selection strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def _layer_path(model) -> str:
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return path
    raise OkdError(f"depth pruning does not know where the layers of {type(model).__name__} are; "
                   f"supported: Llama-style (model.layers), GPT-2 (transformer.h), OPT, GPT-NeoX")


def prune_model(model, keep: list[int]):
    """A new model with the teacher's embeddings, final norm, output matrix and layers `keep`."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally, only slower
        no_init_weights = contextlib.nullcontext

    config = model.config
    n = config.num_hidden_layers
    keep = [int(i) for i in keep]
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise OkdError(f"layers to keep must be increasing indices in 0..{n - 1}, got {keep}")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        # GPT-2's attention scale then depends on the layer's position, which pruning changes.
        raise OkdError("depth pruning of models with scale_attn_by_inverse_layer_idx is not supported")

    new_config = copy.deepcopy(config)
    new_config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        new_config.layer_types = [config.layer_types[i] for i in keep]
    if getattr(config, "max_window_layers", None) is not None:  # Qwen2: sliding from this layer up
        new_config.max_window_layers = sum(i < config.max_window_layers for i in keep)

    # Renumber `<path>.<old>.` to `<path>.<new>.`, drop the other layers.
    prefix = _layer_path(model) + "."
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    state = {}
    for key, value in model.state_dict().items():
        m = pattern.match(key)
        if m is None:
            state[key] = value
        elif int(m.group(1)) in new_index:
            state[prefix + f"{new_index[int(m.group(1))]}." + key[m.end():]] = value

    with no_init_weights():  # every weight is overwritten below; skip the random init
        student = AutoModelForCausalLM.from_config(new_config, dtype=model.dtype)
    missing, unexpected = student.load_state_dict(state, strict=False)
    # Tied output matrices may be absent from one side's state dict; anything else is a bug.
    tied = {k for k in missing if "lm_head" in k or "embed_out" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"pruned state dict mismatch: missing {missing}, unexpected {unexpected}")
    # load_state_dict copies the teacher's tied matrix into two separate parameters (both keys are in
    # its state dict): tie them again as the config says, or the student counts and saves it twice
    student.tie_weights()
    student.generation_config = copy.deepcopy(model.generation_config)
    return student.to(next(model.parameters()).device).eval()


def count_parameters(model) -> int:
    """Distinct parameters (a tied input/output matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def init_student(teacher: str | Path, k: int, strategy: str = "uniform",
                 out_dir: str | Path = "student", *, overwrite: bool = False):
    """Write a depth-pruned copy of `teacher` (a preset name or HF directory) to `out_dir`.

    Returns (out_dir, teacher_params, student_params).
    """
    from okd.config import ModelConfig
    from okd.models.loading import load_model, load_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not overwrite:
        raise OkdError(f"{out_dir} already holds a model; choose another output directory or "
                       f"overwrite it (--force)")
    spec = ModelConfig(path=str(teacher), dtype="auto")  # the shared loader: directory, hub id, .gguf, preset
    try:
        model, tokenizer = load_model(spec), load_tokenizer(spec)
    except OkdError as e:
        raise OkdError(f"cannot load teacher {teacher!r} ({e}); give a model preset "
                       f"(okd models list) or a Hugging Face model directory") from None
    keep = select_layers(model.config.num_hidden_layers, k, strategy)
    student = prune_model(model, keep)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # Provenance, so a run can say where its student came from.
    (out_dir / "okd_student.json").write_text(json.dumps(
        {"teacher": str(teacher), "teacher_layers": model.config.num_hidden_layers,
         "kept_layers": keep, "strategy": strategy}, indent=2) + "\n")
    return out_dir, count_parameters(model), count_parameters(student)
