"""The OKD online module: a peft LoRA adapter on the teacher's attention query and value projections.

Only the adapter trains; `get_peft_model` freezes every base weight, so the teacher itself is
bit-for-bit unchanged and the module saves as an ordinary peft adapter (`online_module/`).
"""

from __future__ import annotations

import math

from okd.config import OnlineConfig
from okd.errors import OkdError

# Query/value projection names per architecture (peft matches them as module-name suffixes).
# GPT-2 fuses q, k and v in one Conv1D `c_attn`, so its adapter covers all three.
QV_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "phi": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
}

# Attribute path of the decoder layer list, for placing the module on the top k layers.
LAYER_PATTERNS = {"gpt2": "h", "gpt_neox": "layers"}


def num_layers(config) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise OkdError(f"cannot tell the number of layers of a {config.model_type} model")


def target_modules(model, cfg: OnlineConfig) -> list[str]:
    if cfg.target_modules:
        return list(cfg.target_modules)
    model_type = model.config.model_type
    if model_type in QV_TARGETS:
        return QV_TARGETS[model_type]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    raise OkdError(f"don't know the query/value projections of a {model_type!r} model; set online.target_modules")


def layer_indices(model, cfg: OnlineConfig) -> list[int] | None:
    """None for every layer, else the indices that get an adapter."""
    n = num_layers(model.config)
    if cfg.layers is None:
        return None
    if isinstance(cfg.layers, float):  # a share of the depth: the same placement for any teacher
        return list(range(n - math.ceil(cfg.layers * n), n))
    if isinstance(cfg.layers, int):
        if not 1 <= cfg.layers <= n:
            raise OkdError(f"online.layers={cfg.layers}: the teacher has {n} layers; give 1..{n} (top k) or a list")
        return list(range(n - cfg.layers, n))
    bad = [i for i in cfg.layers if not 0 <= i < n]
    if bad:
        raise OkdError(f"online.layers: indices {bad} out of range for a teacher with {n} layers")
    return sorted(set(cfg.layers))


def add_online_module(teacher, cfg: OnlineConfig):
    """Wrap the teacher with a trainable LoRA online module; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(teacher, cfg)
    layers = layer_indices(teacher, cfg)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern=LAYER_PATTERNS.get(teacher.config.model_type, "layers") if layers is not None else None,
        fan_in_fan_out=teacher.config.model_type == "gpt2",  # GPT-2's Conv1D stores W transposed
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(teacher, lora)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise OkdError(f"online module: {str(e).splitlines()[0]} (teacher {teacher.config.model_type}); "
                       "fix online.target_modules, or leave it unset for the query/value projections") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise OkdError(f"online module matched no modules {targets}; set online.target_modules")
    return model


def peft_model(model):
    """The PeftModel inside accelerate/DDP/DeepSpeed wrappers (or None when the model has no adapter)."""
    while model is not None and not hasattr(model, "peft_config"):
        model = getattr(model, "module", None)
    return model


def base_teacher(model):
    """A context in which the online teacher computes the frozen base teacher's distribution
    (peft's `disable_adapter`: the LoRA update is skipped, the base weights are untouched)."""
    peft = peft_model(model)
    if peft is None:
        raise ValueError("base_teacher: the model has no online module")
    return peft.disable_adapter()


def update_norm(model) -> float:
    """‖ΔW‖_F over the whole online module: sqrt(Σ_layers ‖scale·B·A‖²_F), the size of the change
    the module makes to the teacher's weights (0 at initialisation, where B = 0)."""
    import torch

    total = 0.0
    peft = peft_model(model)
    for module in peft.modules() if peft is not None else ():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not a or not b or not hasattr(module, "scaling"):
            continue
        for name in a:
            with torch.no_grad():
                delta = b[name].weight.float() @ a[name].weight.float() * module.scaling[name]
            total += float(delta.pow(2).sum())
    return total ** 0.5
