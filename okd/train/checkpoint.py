"""Resumable checkpoints: everything a run needs to continue bit for bit, written atomically.

Layout of `checkpoints/step-0000010/`: `student.safetensors`, `online.safetensors` (trainable
module only), `optim.pt` (optimizer and scheduler states), `rng-<rank>.pt`, `method.pt` (replay
buffers, sampler state), `manifest.json` (every other file's size and sha256, so that damage to any of
them is found before a resume loads anything), `state.json` (step, data position, counters). Tensors go through
safetensors; the rest loads with `torch.load(weights_only=True)`, so no arbitrary object is ever
unpickled. A checkpoint is built in a temporary directory and renamed into place, so a crash mid-save
leaves the previous one intact.

Under FSDP (version 1) the same files hold the full tensors, gathered on the main process
(`fsdp_gather`, every process takes part): the student and online module as in a DDP run, and each
optimizer's full state keyed by parameter name (`FSDP.optim_state_dict`), marked `"format": "fsdp"` in
optim.pt. Loading shards them again (`load_checkpoint(..., fsdp=...)`), also onto another number of
processes.

Under DeepSpeed ZeRO-3 the weights and optimizer states stay partitioned: each engine (the student's,
and the online teacher's for okd; a frozen teacher needs nothing) writes its own DeepSpeed checkpoint
(`engine.save_checkpoint`, every process its partitions) into `deepspeed/student/` and
`deepspeed/online/` of the same temporary directory, and optim.pt, marked `"format": "deepspeed"`, holds
the schedulers only. Loading (`load_checkpoint(..., engines=...)`) needs the same number of processes.
DeepSpeed's own files load through its checkpoint engine (`torch.load`), not through okd's readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from okd.errors import OkdError
from okd.paths import fix_permissions
from okd.train.manifest import MANIFEST, manifest_problem, write_manifest
from okd.train.sharding import fsdp_full_state, fsdp_name

PREFIX = "step-"
DS_DIR, DS_TAG = "deepspeed", "state"  # DeepSpeed checkpoints: <checkpoint>/deepspeed/<engine>/state/
FORMATS = {"fsdp": "under FSDP", "deepspeed": "under DeepSpeed ZeRO-3", None: "without FSDP or DeepSpeed"}


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


def clean_temporary(root: Path) -> None:
    """Tidy what an interrupted save left behind: a complete checkpoint moved aside to be replaced
    (`.tmp-old-step-N`, with no `step-N`) is put back; every other `.tmp-*` directory is removed."""
    if not root.is_dir():
        return
    for p in root.glob(f".tmp-old-{PREFIX}*"):
        final = root / p.name[len(".tmp-old-"):]
        if not final.exists() and (p / "state.json").is_file():
            os.replace(p, final)
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(root: Path, step: int, *, accelerator, student, online, optimizers: dict,
                    schedulers: dict, method_state: dict, state: dict, keep: int = 2,
                    gathered: dict | None = None, engines: dict | None = None) -> Path:
    """Every rank writes its RNG state; the main process writes the rest and renames into place.

    `gathered` (FSDP): the full states from `fsdp_gather`, written instead of reading the models.
    `engines` (DeepSpeed): {"student": engine, "online": engine}; each writes its partitions (every
    process takes part) instead of the model files.

    If anything fails, the temporary directory is removed and the previous checkpoints are left as
    they were; whatever the writers raised (OSError, safetensors' SafetensorError, torch's RuntimeError
    on a full disk, ...) becomes one OkdError saying so. A KeyboardInterrupt is re-raised as it is.
    """
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    failed: BaseException | None = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            clean_temporary(root)
            tmp.mkdir(parents=True)
        except BaseException as e:  # noqa: BLE001 - reported below, after the ranks meet
            failed = e
    accelerator.wait_for_everyone()
    try:
        if tmp.is_dir():  # (not there: the main process could not make it)
            torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        for key, engine in (engines or {}).items():  # a collective: every process, in the same order
            engine.save_checkpoint(str(tmp / DS_DIR / key), tag=DS_TAG, save_latest=False)
    except BaseException as e:  # noqa: BLE001 - reported below, after the ranks meet again
        failed = failed or e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and failed is None:
        try:
            _write_files(tmp, student=student, online=online, optimizers=optimizers, schedulers=schedulers,
                         method_state=method_state, state=state, gathered=gathered, engines=engines,
                         num_processes=accelerator.num_processes)
            _move_into_place(root, tmp, final, step, keep)
        except BaseException as e:  # noqa: BLE001
            failed = e
    if failed is not None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(failed, Exception):
            raise failed  # KeyboardInterrupt (a second Ctrl-C), SystemExit
        kept = checkpoint_dirs(root)
        raise OkdError(f"could not save the checkpoint of step {step} in {str(root)!r} ({write_failure(failed)}); "
                       + (f"the previous checkpoint {kept[-1].name} is intact" if kept else "no checkpoint saved")
                       + " (free disk space or choose another output_dir)") from None
    accelerator.wait_for_everyone()
    return final


def _write_files(tmp: Path, *, student, online, optimizers: dict, schedulers: dict, method_state: dict,
                 state: dict, gathered: dict | None, engines: dict | None, num_processes: int) -> None:
    """The main process's files of a checkpoint, state.json last (it marks the checkpoint complete)."""
    if engines is not None:
        optim = {"format": "deepspeed", "optimizers": {k: f"{DS_DIR}/{k}" for k in engines},
                 "num_processes": num_processes}
    elif gathered is not None:
        save_file(gathered["student"], str(tmp / "student.safetensors"))
        if online is not None:
            save_file(gathered["online"], str(tmp / "online.safetensors"))
        optim = {"format": "fsdp", "optimizers": gathered["optimizers"]}
    else:
        save_model(student, str(tmp / "student.safetensors"))  # handles tied weights
        if online is not None:
            save_file(trainable_state(online), str(tmp / "online.safetensors"))
        optim = {"optimizers": {k: o.state_dict() for k, o in optimizers.items()}}
    optim["schedulers"] = {k: s.state_dict() for k, s in schedulers.items()}
    torch.save(optim, tmp / "optim.pt")
    torch.save(method_state, tmp / "method.pt")
    write_manifest(tmp)
    # last: marks it complete; "manifest" says a manifest belongs to it (checkpoints written before it existed lack one)
    (tmp / "state.json").write_text(json.dumps({**state, "manifest": MANIFEST}, indent=1))


def _move_into_place(root: Path, tmp: Path, final: Path, step: int, keep: int) -> None:
    old = None
    if final.exists():  # the same step again: move the old copy aside, never delete it first
        old = root / f".tmp-old-{PREFIX}{step:07d}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    fix_permissions(tmp)  # safetensors writes private (0600) files whatever the umask
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)


_RUST_IO = re.compile(r'message: "([^"]+)"')  # safetensors: IoError(Os { code: 28, kind: StorageFull, message: "..." })


def write_failure(e: BaseException) -> str:
    """Why a write failed, in a few words: the OS's reason where one is known (in the exception, its
    cause or context, or the text of safetensors' and torch's own errors), else the error's first line."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(e).split())
    found = _RUST_IO.search(text)
    if found:
        return found.group(1)
    for known in ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system"):
        if known.lower() in text.lower():
            return known
    if "file write failed" in text or "unexpected pos" in text:  # torch's zip writer on a full disk
        return f"{type(e).__name__}: file write failed; is the disk full?"
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


@contextlib.contextmanager
def write_guard(what: str, where: Path | str):
    """Writing `what` (e.g. "the trained student") into `where`: any failure of the writers (disk full,
    permissions, safetensors' errors) becomes one OkdError naming it; a KeyboardInterrupt passes."""
    try:
        yield
    except OkdError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the writer raises, the user sees why in one line
        raise OkdError(f"could not write {what} in {str(where)!r} ({write_failure(e)}); free disk space or "
                       "choose another output_dir, then continue with --resume") from None


class SaveClock:
    """`train.save_every_minutes`: whether a checkpoint is due by the wall clock, so that a kill loses at
    most that much work however fast the machine steps. Every process gets the same answer (one
    all-reduce when there are several): they must save together."""

    def __init__(self, minutes: float, clock=time.monotonic):
        self.interval, self.clock = minutes * 60.0, clock
        self.last = clock()

    def saved(self) -> None:
        """Call after every checkpoint save (periodic, timed or on interrupt)."""
        self.last = self.clock()

    def due(self, accelerator) -> bool:
        if self.interval <= 0:
            return False
        flag = self.clock() - self.last >= self.interval
        if accelerator.num_processes > 1:
            total = accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum")
            flag = bool(total.item() > 0)
        return flag


def load_checkpoint(path: Path, *, student, online, optimizers: dict, schedulers: dict,
                    rank: int = 0, fsdp: dict | None = None, engines: dict | None = None) -> tuple[dict, dict]:
    """Restore models, optimizers, schedulers and RNG; returns (state, method_state).

    `fsdp` (under FSDP): {"student": wrapped student, "online": wrapped teacher or None}; `student` and
    `online` are then ignored, and every process takes part. `engines` (under DeepSpeed): {"student":
    engine, "online": engine}, each loading its own partitions (every process takes part, as many
    processes as wrote them).

    A checkpoint that does not fit this run (another model, online module or method) or cannot be
    read raises an OkdError naming it.
    """
    with_online = (fsdp or {}).get("online") is not None if fsdp is not None else online is not None
    # model files are expected where the checkpoint itself says so: a DeepSpeed one holds partitions instead
    # (then loading it without DeepSpeed is refused below as a format mismatch, not as damage)
    check_readable(path, rank=rank, models=not (path / DS_DIR).is_dir(), online=with_online)
    try:
        return _load(path, student=student, online=online, optimizers=optimizers, schedulers=schedulers, rank=rank,
                     fsdp=fsdp, engines=engines)
    except OkdError:
        raise
    except Exception as e:  # noqa: BLE001 - anything here means "this checkpoint does not fit"
        if _is_read_error(e):
            raise _damaged(path, "a file", e) from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # torch: "Error(s) in ...:\n  Missing key(s) ..."
        first = first if len(first) <= 240 else first[:240] + "..."
        raise OkdError(f"checkpoint {str(path)!r} cannot be resumed with this config ({type(e).__name__}: "
                       f"{first}); resume with the config the run was started with, or start a new "
                       "output_dir") from None


def check_readable(path: Path, *, rank: int = 0, models: bool = True, online: bool = False) -> None:
    """Raise an OkdError saying the checkpoint is damaged when one of its files is missing, cut short or
    not what it should be (a copy interrupted, a disk that filled up outside okd): reading the headers
    tells, cheaply, without loading a tensor. A checkpoint with a manifest (every one written since it
    existed) has each of its files checked against the size and sha256 recorded when it was written."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise _damaged(path, "state.json", e) from None
    if not isinstance(state, dict):
        raise _damaged(path, "state.json", "not the state okd writes")
    if state.get("manifest") and (problem := manifest_problem(path)):
        raise _damaged(path, *problem)
    names = ["state.json", "optim.pt", "method.pt"]
    names += ["student.safetensors"] if models else []
    names += ["online.safetensors"] if models and online else []
    names += [f"rng-{rank}.pt"] if (path / f"rng-{rank}.pt").exists() else []
    for name in names:
        f = path / name
        try:
            if name.endswith(".json"):
                json.loads(f.read_text())
            elif name.endswith(".pt"):
                with zipfile.ZipFile(f) as z:  # torch's format: a zip archive, its directory at the end
                    z.namelist()
            else:
                with safe_open(str(f), framework="pt") as t:  # checks the header against the file's size
                    t.keys()
        except Exception as e:  # noqa: BLE001 - FileNotFoundError, BadZipFile, SafetensorError, JSONDecodeError
            raise _damaged(path, name, e) from None


def _is_read_error(e: BaseException) -> bool:
    text = str(e)
    return (isinstance(e, (zipfile.BadZipFile, json.JSONDecodeError, EOFError, OSError))
            or type(e).__name__ == "UnpicklingError" or "PytorchStreamReader" in text
            or "Error while deserializing" in text)


def _damaged(path: Path, name: str, e: BaseException | str) -> OkdError:
    if isinstance(e, str):
        why = e
    elif isinstance(e, FileNotFoundError):
        why = "missing"
    else:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
    return DamagedCheckpoint(f"checkpoint {str(path)!r} is damaged ({name}: {why})")


class DamagedCheckpoint(OkdError):
    """A checkpoint with a file missing, cut short or changed: a resume falls back to the one before it."""


def _load(path: Path, *, student, online, optimizers: dict, schedulers: dict, rank: int,
          fsdp: dict | None, engines: dict | None = None) -> tuple[dict, dict]:
    optim = torch.load(path / "optim.pt", weights_only=True, mmap=fsdp is not None)  # FSDP: only rank 0 reads it
    written = optim.get("format")
    expected = "fsdp" if fsdp is not None else "deepspeed" if engines is not None else None
    if written != expected:
        raise OkdError(f"checkpoint {str(path)!r} was written {FORMATS.get(written, written)}; resume it with the "
                       "distributed setting it was written with (or start a new output_dir)")
    if set(optim["optimizers"]) != set(optimizers):
        raise OkdError(f"checkpoint {str(path)!r} was written by a run with optimizers {sorted(optim['optimizers'])}, "
                       f"this one has {sorted(optimizers)} (another method.teacher?); resume with the original config")
    if engines is not None:
        _deepspeed_load(path, engines, optim)
    elif fsdp is not None:
        _fsdp_load(path, fsdp, optimizers, optim["optimizers"], rank)
    else:
        load_model(student, str(path / "student.safetensors"))  # strict: another student is an error
        if online is not None:
            tensors = load_file(str(path / "online.safetensors"))
            params = dict(online.named_parameters())
            wanted = {n for n, p in params.items() if p.requires_grad}
            if set(tensors) != wanted:
                raise OkdError(f"checkpoint {str(path)!r} holds another online module ({len(tensors)} tensors, "
                               f"this run has {len(wanted)}); resume with the online.* settings the run was started with")
            with torch.no_grad():
                for name, value in tensors.items():
                    params[name].copy_(value)
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


# ----------------------------------------------------------------------------- FSDP (version 1)

def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer


def _aliases(model, trainable_only: bool) -> list[tuple[list[str], torch.nn.Parameter]]:
    """(names, parameter) per distinct parameter: tied weights (the output layer and the input embedding,
    which FSDP leaves whole in okd) are one parameter with several names."""
    groups: dict[int, tuple[list[str], torch.nn.Parameter]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if not trainable_only or p.requires_grad:
            groups.setdefault(id(p), ([], p))[0].append(fsdp_name(n))
    return list(groups.values())


def fsdp_gather(accelerator, student, online, optimizers: dict) -> dict:
    """The full student, the online module's trainable tensors and each optimizer's full state (keyed by
    parameter name), on the main process (empty elsewhere). Every process must call it."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    out: dict = {"optimizers": {}}
    for key, model in (("student", student), ("online", online)):
        if model is None:
            continue
        with fsdp_full_state(model, accelerator.device):
            full = model.state_dict()
            keep = {names[0] for names, _ in _aliases(model, trainable_only=key == "online")}
            if key == "student":  # persistent buffers too, as save_model writes them
                keep |= {fsdp_name(n) for n, _ in model.named_buffers()}
            out[key] = {k: v.detach().contiguous() for k, v in full.items() if k in keep}
            if key in optimizers:
                out["optimizers"][key] = FSDP.optim_state_dict(model, _inner(optimizers[key]))
    return out


def _fsdp_load(path: Path, models: dict, optimizers: dict, optim_states: dict, rank: int) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for key, model in models.items():
        if model is None:
            continue
        tensors = load_file(str(path / f"{key}.safetensors"))  # memory-mapped: one copy for all processes
        groups = _aliases(model, trainable_only=key == "online")
        known = {n for names, _ in groups for n in names}
        with FSDP.summon_full_params(model, writeback=True):
            buffers = {fsdp_name(n): b for n, b in model.named_buffers()} if key == "student" else {}
            missing = [names[0] for names, _ in groups if not any(n in tensors for n in names)]
            extra = sorted(set(tensors) - known - set(buffers))
            if missing or extra:
                what = "student" if key == "student" else "online module"
                raise OkdError(f"checkpoint {str(path)!r} holds another {what} (missing {missing[:3]}, unexpected "
                               f"{extra[:3]}); resume with the config the run was started with")
            with torch.no_grad():
                for names, p in groups:
                    p.copy_(tensors[next(n for n in names if n in tensors)])
                for n, b in buffers.items():
                    if n in tensors:
                        b.copy_(tensors[n])
        if key in optimizers:
            with fsdp_full_state(model, torch.device("cpu")):  # rank 0 reads, FSDP scatters
                flat = FSDP.optim_state_dict_to_load(model, _inner(optimizers[key]),
                                                     optim_states[key] if rank == 0 else {})
            optimizers[key].load_state_dict(flat)


# ----------------------------------------------------------------------------- DeepSpeed ZeRO-3

def _deepspeed_load(path: Path, engines: dict, optim: dict) -> None:
    """Each engine loads its own partitions: module, fp32 master weights, optimizer states (okd's
    schedules are restored from optim.pt by the caller; the engines have none of their own)."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    if optim.get("num_processes", world) != world:
        raise OkdError(f"checkpoint {str(path)!r} was written by {optim['num_processes']} DeepSpeed processes, this "
                       f"run has {world}: ZeRO-3 partitions are per process; resume with "
                       f"--num_processes {optim['num_processes']}")
    for key, engine in engines.items():
        where = path / DS_DIR / key
        if not (where / DS_TAG).is_dir():
            raise OkdError(f"checkpoint {str(path)!r} has no DeepSpeed state for the {key} engine ({where} is "
                           "missing); resume with the config the run was started with")
        loaded, _ = engine.load_checkpoint(str(where), tag=DS_TAG, load_module_strict=True,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise OkdError(f"checkpoint {str(path)!r}: DeepSpeed could not load the {key} engine's state from "
                           f"{where}; resume with the config the run was started with")
