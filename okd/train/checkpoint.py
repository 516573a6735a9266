"""Resumable checkpoints: everything a run needs to continue bit for bit, written atomically.

Layout of `checkpoints/step-0000010/`: `student.safetensors`, `online.safetensors` (trainable
module only), `optim.pt` (optimizer and scheduler states), `rng-<rank>.pt`, `method.pt` (replay
buffers, sampler state), `state.json` (step, data position, counters). Tensors go through
safetensors; the rest loads with `torch.load(weights_only=True)`, so no arbitrary object is ever
unpickled. A checkpoint is built in a temporary directory and renamed into place, so a crash mid-save
leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

PREFIX = "step-"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a complete one has state.json, written last)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": np_state[2],
        "numpy_gauss": [np_state[3], np_state[4]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], *state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, *, accelerator, student, online, optimizers: dict,
                    schedulers: dict, method_state: dict, state: dict, keep: int = 2) -> Path:
    """Every rank writes its RNG state; the main process writes the rest and renames into place."""
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(student, str(tmp / "student.safetensors"))  # handles tied weights
        if online is not None:
            save_file(trainable_state(online), str(tmp / "online.safetensors"))
        torch.save({"optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                    "schedulers": {k: s.state_dict() for k, s in schedulers.items()}}, tmp / "optim.pt")
        torch.save(method_state, tmp / "method.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))  # last: marks it complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, *, student, online, optimizers: dict, schedulers: dict,
                    rank: int = 0) -> tuple[dict, dict]:
    """Restore models, optimizers, schedulers and RNG; returns (state, method_state)."""
    load_model(student, str(path / "student.safetensors"))
    if online is not None:
        tensors = load_file(str(path / "online.safetensors"))
        params = dict(online.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
    optim = torch.load(path / "optim.pt", weights_only=True)
    for k, o in optimizers.items():
        o.load_state_dict(optim["optimizers"][k])
    for k, s in schedulers.items():
        s.load_state_dict(optim["schedulers"][k])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    method_state = torch.load(path / "method.pt", weights_only=True)
    state = json.loads((path / "state.json").read_text())
    return state, method_state
