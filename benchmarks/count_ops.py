"""Operators and host-device synchronisations of one call, e.g. one training step (issue 14).

    from count_ops import count_step
    counts = count_step(lambda: train_step(run))   # {"ops": n, "syncs": n, "by_op": {...}, ...}

`count_step(step_fn)` runs `step_fn()` once under a `TorchDispatchMode`, which sees every operator
that reaches the dispatcher below autograd: the forward's, the backward's (the autograd engine
carries the mode into its threads) and the optimizer's. Counted:

- `ops`: every dispatched operator call, `by_op` per operator ("aten.mm", ...); `views`: those of
  them that are views (aten.view, aten.t, ...: metadata only, no kernel), so `ops - views` is close
  to the number of kernels launched by an eager step (some ops launch several, CPU-side ones none).
- `syncs`: calls that make the host wait for the device, `by_sync` per operator:
  - reading a value: `aten._local_scalar_dense` (`.item()`, `int(t)`, `float(t)`, `bool(t)`,
    `torch.allclose`), `aten.equal`;
  - an output whose shape depends on the data: `nonzero` (`torch.where(c)`, `argwhere`),
    `masked_select`, the `unique` family, `repeat_interleave` without `output_size`, `bincount`,
    indexing or index-assignment with a boolean mask (`x[mask]`, `x[mask] = v`);
  - a blocking copy between host and device: `_to_copy`/`copy_` from a device tensor to the CPU
    (`.cpu()`, `.tolist()`, `.numpy()`), or to the device from the CPU without `non_blocking`.

On a GPU a sync counts where one of the op's tensors lives on the device. On CPU nothing ever
waits, so that rule would always give 0: there the ops of the first two kinds count on CPU tensors
too (`count_step` decides after the call: if no op touched a non-CPU tensor, the CPU-side ones count).
So a CPU count shows the value reads and data-dependent shapes a GPU step would pay for (the step's
batch arithmetic on CPU tensors included, which on the GPU costs nothing), but not the copies:
`.tolist()` of a device tensor is a copy on the GPU and no operator at all on CPU. One exception:
the non-fused optimizers read each parameter's step counter, a CPU tensor on every device, with
`.item()`; those reads are never syncs and are reported apart (`optimizer_step_reads`). Compare
counts across commits on the same device, not across devices.

A compiled region (torch.compile) is seen as what it dispatches; run the step eagerly for op counts.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VALUE_READS = {"aten._local_scalar_dense", "aten.equal"}
DATA_DEPENDENT_SHAPES = {"aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique", "aten._unique2",
                         "aten.unique_dim", "aten.unique_consecutive", "aten.unique_dim_consecutive",
                         "aten.bincount", "aten.argwhere"}
COPIES = {"aten._to_copy", "aten.copy_", "aten.copy"}


def _tensors(args, kwargs):
    out = []
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _bool_index(name: str, args) -> bool:
    """aten.index / index_put with a boolean (or uint8) mask among the indices: a nonzero inside."""
    if name not in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        return False
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _copy_syncs(name: str, func, args, kwargs, out) -> bool:
    """A blocking host<->device copy."""
    kwargs = kwargs or {}
    if name == "aten._to_copy":
        src, dst = args[0], out
    elif name in ("aten.copy_", "aten.copy") and len(args) > 1:
        dst, src = args[0], args[1]
    else:
        return False
    if not (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)):
        return False
    s, d = src.device.type, dst.device.type
    if s == d or "meta" in (s, d):
        return False
    non_blocking = kwargs.get("non_blocking", args[2] if name != "aten._to_copy" and len(args) > 2 else False)
    return d == "cpu" or not non_blocking  # to the host: waits for the value; to the device: pageable, blocking


def _optimizer_step_read() -> bool:
    """Whether this scalar read is torch.optim's `_get_value` of a parameter's step counter, which
    the non-fused optimizers keep as a CPU tensor on every device."""
    from torch.optim.optimizer import _get_value

    frame = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            return False
        if frame.f_code is _get_value.__code__:
            return True
        frame = frame.f_back
    return False


class CountOps(TorchDispatchMode):
    """Counts every dispatched op, its views, and the syncs (module doc) while active."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()
        self.views = 0
        self.optimizer_reads = 0
        self.device_syncs: Counter = Counter()  # syncs on a device tensor (the GPU rule)
        self.host_syncs: Counter = Counter()  # the same kinds of op on CPU tensors only (the CPU rule)
        self.device = "cpu"  # the first non-CPU device type an op touched

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.by_op[name] += 1
        self.views += bool(getattr(func, "is_view", False))
        tensors = _tensors(args, kwargs)
        devices = [t.device.type for t in tensors if t.device.type not in ("cpu", "meta")]
        on_device = bool(devices)
        if devices and self.device == "cpu":
            self.device = devices[0]
        if name in COPIES:
            if _copy_syncs(name, func, args, kwargs, out):
                self.device_syncs[name] += 1
            return out
        syncing = (name in VALUE_READS or name in DATA_DEPENDENT_SHAPES or _bool_index(name, args)
                   or (func is torch.ops.aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is None))
        if syncing and not on_device and _optimizer_step_read():
            self.optimizer_reads += 1  # AdamW's CPU step counter: host memory on the GPU too, never a sync
        elif syncing:
            (self.device_syncs if on_device else self.host_syncs)[name] += 1
        return out

    def result(self) -> dict:
        syncs = self.device_syncs if self.device != "cpu" else self.host_syncs + self.device_syncs
        return {"ops": sum(self.by_op.values()), "views": self.views, "syncs": sum(syncs.values()),
                "device": self.device, "optimizer_step_reads": self.optimizer_reads,
                "by_sync": dict(sorted(syncs.items(), key=lambda kv: -kv[1])),
                "by_op": dict(sorted(self.by_op.items(), key=lambda kv: -kv[1]))}


def count_step(step_fn) -> dict:
    """Run `step_fn()` once and return {"ops", "syncs", "views", "device", "by_op", "by_sync"} (module doc)."""
    mode = CountOps()
    with mode:
        step_fn()
    return mode.result()


def summary(counts: dict, top: int = 8) -> str:
    """One line: ops, syncs and the ops that synced."""
    syncs = ", ".join(f"{k.removeprefix('aten.')} {v}" for k, v in list(counts["by_sync"].items())[:top])
    return (f"{counts['ops']} ops ({counts['ops'] - counts['views']} non-view), {counts['syncs']} syncs"
            + (f" ({syncs})" if syncs else "") + f" [{counts['device']}]")
