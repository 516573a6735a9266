"""FSDP and DeepSpeed ZeRO-3 plumbing for the trainer (docs/scale.md): what okd refuses, how the
output layer stays readable by the chunked losses, the frozen teacher's engine, gathered saves.

Kept apart from okd/train/trainer.py so that the loop reads the same with or without sharding.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from okd.config import Config
from okd.errors import OkdError

log = logging.getLogger("okd.train.trainer")  # messages read as the trainer's


def head_modules(model) -> list:
    """The output layer (and the input embedding when it is tied to it): kept unsharded under FSDP,
    because okd's chunked losses multiply hidden states by the output weight outside the forward."""
    from okd.models.loading import causal_lm

    lm = causal_lm(model)
    out, inp = lm.get_output_embeddings(), lm.get_input_embeddings()
    return [out] + ([inp] if inp is not None and inp.weight is out.weight else [])


def unsharded_head_params(model) -> list:
    seen: dict[int, torch.nn.Parameter] = {}
    for m in head_modules(model):
        for p in m.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def check_distributed(cfg: Config, distributed_type, fsdp_version: int = 1) -> None:
    """Refuse the combinations the trainer cannot run correctly (docs/scale.md says why)."""
    kind = getattr(distributed_type, "value", str(distributed_type))
    if kind == "FSDP" and (fsdp_version or 1) != 1:
        raise OkdError(f"FSDP version {fsdp_version} is not supported by okd train (the frozen teacher is sharded "
                       "on its own, which accelerate allows with FSDP1 only); set fsdp_version: 1 as in "
                       "configs/accelerate/fsdp.yaml")
    if kind in ("FSDP", "DEEPSPEED") and cfg.method.cross_tokenizer != "off":
        name = "FSDP" if kind == "FSDP" else "DeepSpeed ZeRO-3"
        raise OkdError(f"method.cross_tokenizer={cfg.method.cross_tokenizer} is not supported under {name} yet (its "
                       "teacher-side logits are formed outside the teacher's forward, untested with sharded "
                       "weights); run it with DDP (configs/accelerate/ddp.yaml)")


# ----------------------------------------------------------------------------- DeepSpeed ZeRO-3

def configure_deepspeed(cfg: Config, accelerator) -> dict:
    """Fit the DeepSpeed config of `accelerate launch` to okd's loop, or refuse what the loop cannot honour.

    okd keeps its own loop under DeepSpeed: it accumulates `train.grad_accum` micro-batches itself,
    normalises the loss by the step's scored tokens, checks for NaN/inf before any optimizer steps, and
    steps the online module before the student. So DeepSpeed gets gradient_accumulation_steps 1 (every
    `engine.step()` okd calls is a step), okd's clipping (`train.max_grad_norm`, applied by DeepSpeed
    inside its step, from the same global norm) and okd's AdamW and schedule. Returns the config.
    """
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    tc = cfg.train
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage != 3:
        raise OkdError(f"DeepSpeed ZeRO stage {stage} is not supported by okd train; use zero_stage: 3 "
                       "(configs/accelerate/deepspeed_zero3.yaml), or DDP (configs/accelerate/ddp.yaml) when the "
                       "models fit one device")
    if str(ds.get("fp16", {}).get("enabled", False)).lower() == "true":
        raise OkdError("DeepSpeed fp16 is not supported by okd train (its loss scaler skips steps on overflow, "
                       "which okd would report as non-finite gradients); use mixed_precision: bf16, or 'no'")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise OkdError(f"the DeepSpeed config sets {key!r}; okd builds its own AdamW and linear schedule for "
                           "the student and the online module (train.lr, online.lr, train.warmup_steps): remove "
                           f"{key!r} from the DeepSpeed config")
    for key, value, why in (("gradient_accumulation_steps", 1, f"okd accumulates train.grad_accum={tc.grad_accum} "
                             "micro-batches itself"),
                            ("gradient_clipping", float(tc.max_grad_norm), "train.max_grad_norm"),
                            ("train_micro_batch_size_per_gpu", tc.batch_size, "train.batch_size")):
        old = ds.get(key, "auto")
        if old != "auto" and float(old) != float(value):
            log.warning("DeepSpeed config %s=%s replaced by %s (%s)", key, old, value, why)
        ds[key] = value
    ds["train_batch_size"] = tc.batch_size * accelerator.num_processes
    # student/ and online_module/ are written from the gathered weights at the end
    ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return ds


def deepspeed_frozen_engine(model, accelerator):
    """The frozen teacher as its own ZeRO-3 engine without an optimizer, partitioned like the student
    (as TRL's `prepare_deepspeed` does for reference and teacher models)."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden:  # the student's sizes were filled in by accelerate; use the teacher's own
        config["zero_optimization"].update({"reduce_bucket_size": hidden * hidden,
                                            "stage3_param_persistence_threshold": 10 * hidden,
                                            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden)})
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def zero3_gathered(params):
    """Gather ZeRO-3 partitioned parameters for the duration of the block (read-only; a no-op for
    parameters that are not partitioned)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def head_params(model) -> list:
    """The output layer's parameters (and the tied input embedding's), each once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for m in head_modules(model):
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


class ZeroHeadGather:
    """Under ZeRO-3, keep each model's output layer gathered from the end of its forward until the
    micro-batch's losses are computed.

    ZeRO-3 partitions every weight outside its module's forward, and okd's chunked losses multiply
    hidden states by the output weight after the forward. A forward hook on each engine's module
    gathers that weight (all ranks take part, as every rank runs the same forwards) while `scope()` is
    open; the scope releases it before backward. The student's head gradient, which the chunked loss
    computes inside its forward, reaches DeepSpeed at backward through the parameter's gradient hook
    and is reduce-scattered into the partitions like any other (tested against one process without
    DeepSpeed: tests/test_scale_deepspeed.py).
    """

    def __init__(self, engines):
        self._stack: contextlib.ExitStack | None = None
        self._done: set[int] = set()
        self._handles = [e.module.register_forward_hook(self._hook(head_params(e.module))) for e in engines]

    def _hook(self, params):
        def hook(module, args, output):
            if self._stack is not None and id(module) not in self._done:
                self._done.add(id(module))
                self._stack.enter_context(zero3_gathered(params))
        return hook

    @contextlib.contextmanager
    def scope(self):
        with contextlib.ExitStack() as stack:
            self._stack = stack
            try:
                yield
            finally:
                self._stack = None
                self._done.clear()


def zero3_grad_norm(engine, accelerator) -> float:
    """The global L2 norm of a ZeRO-3 engine's accumulated gradients, between backward and step
    (each rank sums the squares of its partitions; DeepSpeed clips by the same norm in its step)."""
    from deepspeed.utils import safe_get_local_grad

    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for p in engine.module.parameters():
        if p.requires_grad:
            g = safe_get_local_grad(p)
            if g is not None:
                total += g.double().pow(2).sum()
    return float(accelerator.reduce(total, "sum").sqrt())


def fsdp_name(name: str) -> str:
    """A parameter's name without FSDP's wrapper levels (the name it has in the bare model)."""
    return name.replace("_fsdp_wrapped_module.", "")


def fsdp_full_state(model, device):
    """FSDP's full (gathered, rank-0) state-dict mode for weights and optimizer state. Weights already on
    the CPU are not "offloaded" to it, unlike accelerator.get_state_dict: FSDP would then free memory the
    gathered copy still points to (a segfault on CPU processes)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    offload = device.type != "cpu"
    return FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
                                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True))


def full_state_dict(accelerator, model) -> dict:
    """The whole state dict of a sharded model, on the main process (every process takes part)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        with fsdp_full_state(model, accelerator.device):
            return model.state_dict()
    return accelerator.get_state_dict(model)


def save_fsdp_adapter(path: Path, peft_model, state: dict) -> None:
    """What peft's save_pretrained writes (adapter_model.safetensors, adapter_config.json), from the full
    state dict gathered from FSDP. peft (0.21) picks the adapter's entries by the model's module names,
    which FSDP's wrapping changes (`..._fsdp_wrapped_module...`), and would write an empty adapter."""
    import copy

    from safetensors.torch import save_file

    adapter = peft_model.active_adapter
    trainable = {fsdp_name(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    tensors = {k.replace(f".{adapter}.", "."): v.detach().contiguous() for k, v in state.items() if k in trainable}
    if len(tensors) != len(trainable):
        raise RuntimeError(f"the gathered state of the online module has {len(tensors)} of its {len(trainable)} "
                           "trainable tensors")
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.copy(peft_model.peft_config[adapter])
    config.inference_mode = True
    config.save_pretrained(str(path))
