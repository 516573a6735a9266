"""How the models are spread over processes: one small interface, three implementations.

`Strategy` is one process or DDP; `FSDPStrategy` and `DeepSpeedStrategy` (ZeRO-3) override what
differs (okd/train/sharding.py holds their plumbing). The loop (okd/train/trainer.py) calls only
these methods, so it reads the same whichever runs:

    prepare(student, teacher, optimizers)   wrap models and optimizers for the devices
    schedulers(schedule)                    one LR schedule per optimizer
    forward_backward(method, batch, norm, last)   one micro-batch: losses, then their backward
    gathered(params)                        weights readable outside a forward (validation metrics)
    grad_norms(max_norm)                    after the step's backwards: clip (or measure) per optimizer
    discard()                               drop the step's gradients (a non-finite step)
    step(key) / hold(key)                   step one optimizer and zero its gradients / only zero them
    checkpoint_args() / load_args()         what okd.train.checkpoint needs beyond the bare models
    save_outputs(out, tokenizer)            student/ and online_module/
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from okd.train.sharding import (
    ZeroHeadGather,
    configure_deepspeed,
    deepspeed_frozen_engine,
    full_state_dict,
    head_modules,
    save_fsdp_adapter,
    unsharded_head_params,
    zero3_gathered,
)


def _gathered_states(self) -> tuple:
    """FSDP and ZeRO-3: the full state dicts, gathered on the main process (every process takes part)."""
    acc = self.accelerator
    return full_state_dict(acc, self.student), full_state_dict(acc, self.teacher) if self.online else None


class Strategy:
    """One process, or DDP (accelerate wraps the trained models; gradients are all-reduced once per step)."""

    def __init__(self, accelerator, cfg):
        self.accelerator, self.cfg = accelerator, cfg
        self.online = cfg.method.resolved_teacher == "online"
        self.student = self.teacher = None
        self.optimizers: dict = {}

    def configure(self) -> None:
        """Before any model loads."""

    def prepare(self, student, teacher, optimizers: dict):
        acc = self.accelerator
        student, optimizers["student"] = acc.prepare(student, optimizers["student"])
        if self.online:
            teacher, optimizers["online"] = acc.prepare(teacher, optimizers["online"])
        elif teacher is not None:
            teacher = teacher.to(acc.device)  # frozen: no DDP wrapper, it has nothing to train
        if teacher is not None:
            teacher.eval()  # no dropout in the teacher; LoRA dropout (online.dropout) is not applied
        self.student, self.teacher, self.optimizers = student, teacher, optimizers
        return student, teacher, optimizers

    def schedulers(self, schedule) -> dict:
        """schedule(key, optimizer) -> LR scheduler, for each optimizer."""
        return {k: schedule(k, o) for k, o in self.optimizers.items()}

    def trained_models(self) -> dict:
        return {"student": self.student, **({"online": self.teacher} if self.online else {})}

    def forward_backward(self, method, batch: dict, norm: float, last: bool) -> dict:
        acc = self.accelerator
        with contextlib.ExitStack() as no_sync:
            if not last:  # all-reduce the gradients once per step, not per micro-batch
                for m in self.trained_models().values():
                    no_sync.enter_context(acc.no_sync(m))
            with acc.autocast():
                losses = method.losses(batch, norm)
            acc.backward(sum(losses.values()))
        return losses

    @staticmethod
    def gathered(params):
        """A context in which these weights can be read outside a forward (validation metrics)."""
        return contextlib.nullcontext()

    def grad_norms(self, max_norm: float) -> dict:
        """Clip both before stepping either, so a bad step changes nothing. All parameters (frozen ones
        have no grad): accelerate then recognises an FSDP model and clips by the norm over all shards."""
        if max_norm <= 0:
            return {}
        return {k: self.accelerator.clip_grad_norm_(list(m.parameters()), max_norm)
                for k, m in self.trained_models().items()}

    def discard(self) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)

    def step(self, key: str) -> None:
        self.optimizers[key].step()
        self.optimizers[key].zero_grad(set_to_none=True)

    def hold(self, key: str) -> None:
        """Drop one optimizer's gradients without stepping it (online.warmup_steps: the student waits)."""
        self.optimizers[key].zero_grad(set_to_none=True)

    def checkpoint_args(self) -> dict:
        return {}

    def load_args(self) -> dict:
        return {}

    def unwrapped(self) -> tuple:
        unwrap = self.accelerator.unwrap_model
        return unwrap(self.student), unwrap(self.teacher) if self.online else None

    def full_states(self) -> tuple:
        return None, None

    def save_outputs(self, out: Path, tokenizer) -> None:
        """student/ (HF directory + tokenizer, safetensors) and online_module/ (peft adapter)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        s_state, t_state = self.full_states()  # sharded: every process takes part
        if not acc.is_main_process:
            return
        student, online = self.unwrapped()
        student.save_pretrained(out / "student", safe_serialization=True, state_dict=s_state)
        tokenizer.save_pretrained(out / "student")
        if online is not None:
            self.save_adapter(out / "online_module", online, t_state)

    def save_adapter(self, path: Path, online, state) -> None:
        online.save_pretrained(path, safe_serialization=True, state_dict=state)


class FSDPStrategy(Strategy):
    """FSDP (version 1): the output layers stay whole (the chunked losses read them after the forward;
    their gradients are averaged by okd), the frozen teacher is sharded like the student."""

    def prepare(self, student, teacher, optimizers: dict):
        acc, plugin = self.accelerator, self.accelerator.state.fsdp_plugin
        self._unsharded = unsharded_head_params(student)
        plugin.ignored_modules = head_modules(student)
        student, optimizers["student"] = acc.prepare(student, optimizers["student"])
        if teacher is not None:
            plugin.ignored_modules = head_modules(teacher)
            if self.online:
                teacher, optimizers["online"] = acc.prepare(teacher, optimizers["online"])
            else:
                teacher = acc.prepare_model(teacher)
            teacher.eval()
        self.student, self.teacher, self.optimizers = student, teacher, optimizers
        return student, teacher, optimizers

    def grad_norms(self, max_norm: float) -> dict:
        for p in self._unsharded:  # FSDP does not average what it does not shard (DDP semantics: mean)
            if p.grad is not None:
                p.grad = self.accelerator.reduce(p.grad, "mean")
        return super().grad_norms(max_norm)

    def checkpoint_args(self) -> dict:
        from okd.train.checkpoint import fsdp_gather

        online = self.teacher if self.online else None
        return {"gathered": fsdp_gather(self.accelerator, self.student, online, self.optimizers)}

    def load_args(self) -> dict:
        return {"fsdp": {"student": self.student, "online": self.teacher if self.online else None}}

    full_states = _gathered_states

    def save_adapter(self, path: Path, online, state) -> None:
        save_fsdp_adapter(path, online, state)


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO-3: each trained model is its own engine, which okd steps itself (the online
    module's first); the frozen teacher is an engine without optimizer; the output layers are kept
    gathered from each forward until the losses are computed (ZeroHeadGather)."""

    def configure(self) -> None:
        configure_deepspeed(self.cfg, self.accelerator)

    def prepare(self, student, teacher, optimizers: dict):
        acc = self.accelerator
        student, optimizers["student"] = acc.prepare(student, optimizers["student"])
        if self.online:
            # a second engine, from the same config; accelerate's single "engine for accelerator.backward"
            # slot stays the student's (else accelerate warns that the slot is taken)
            wrapped, acc.deepspeed_engine_wrapped = getattr(acc, "deepspeed_engine_wrapped", None), None
            teacher, optimizers["online"] = acc.prepare(teacher, optimizers["online"])
            acc.deepspeed_engine_wrapped = wrapped
        elif teacher is not None:
            teacher = deepspeed_frozen_engine(teacher, acc)
        if teacher is not None:
            teacher.eval()
        self.student, self.teacher, self.optimizers = student, teacher, optimizers
        self.engines = self.trained_models()
        self.heads = ZeroHeadGather([m for m in (student, teacher) if m is not None])
        return student, teacher, optimizers

    def schedulers(self, schedule) -> dict:
        # on the optimizer each engine steps (DeepSpeedCPUAdam when the optimizer is offloaded)
        return {k: schedule(k, e.optimizer.optimizer) for k, e in self.engines.items()}

    def forward_backward(self, method, batch: dict, norm: float, last: bool) -> dict:
        # ZeRO-3 reduce-scatters every micro-batch's gradients (nothing to defer); one backward of the sum
        # through the student's engine: the two losses' graphs share nothing (the chunked loss routes each
        # gradient to its own model), and the online module's engine reduces its gradients through its own
        # hooks in the same backward
        with self.heads.scope(), self.accelerator.autocast():
            losses = method.losses(batch, norm)
        self.engines["student"].backward(sum(losses.values()))
        return losses

    @staticmethod
    def gathered(params):
        return zero3_gathered(params)

    def grad_norms(self, max_norm: float) -> dict:
        from okd.train.sharding import zero3_grad_norm

        # DeepSpeed clips inside its step, by this same norm (gradient_clipping)
        return {k: torch.tensor(zero3_grad_norm(e, self.accelerator)) for k, e in self.engines.items()}

    def discard(self) -> None:
        super().discard()
        for e in self.engines.values():  # the accumulated partitions (the wrapper's zero_grad is a no-op)
            e.optimizer.zero_grad(set_to_none=True)

    def step(self, key: str) -> None:
        self.engines[key].step()  # clips, steps okd's AdamW on the partitions, zeroes the gradients

    def hold(self, key: str) -> None:
        self.engines[key].optimizer.zero_grad(set_to_none=True)

    def checkpoint_args(self) -> dict:
        return {"engines": self.engines}

    def load_args(self) -> dict:
        return {"engines": self.engines}

    full_states = _gathered_states


def strategy_for(accelerator, cfg) -> Strategy:
    from accelerate.utils import DistributedType

    kinds = {DistributedType.FSDP: FSDPStrategy, DistributedType.DEEPSPEED: DeepSpeedStrategy}
    return kinds.get(accelerator.distributed_type, Strategy)(accelerator, cfg)
