"""Run-time faults of issue 18, unit by unit (fast: no training loop): one run per output directory
(a lock, tested with real processes), writes that fail in the middle of a checkpoint save whatever the
writer raises, and damaged checkpoints told apart from checkpoints of another config.
The trainer-level versions are in tests/test_reliability.py and tests/test_errors.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import okd.train.checkpoint as ckpt
from okd.errors import OkdError
from okd.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint, write_guard
from okd.train.lock import LOCK_NAME, run_lock

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from okd.train.lock import run_lock
    with run_lock(sys.argv[1]):
        Path(sys.argv[2]).write_text("held")
        time.sleep(120)
""")


def _hold(out: Path, tmp: Path) -> subprocess.Popen:
    ready = tmp / f"ready-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the holder did not take the lock"
        time.sleep(0.02)
    return proc


def test_second_process_stops_at_once_naming_the_holder(tmp_path, caplog):
    out = tmp_path / "run"
    proc = _hold(out, tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(OkdError) as e:
            with run_lock(out):
                pass
        assert time.monotonic() - t0 < 5
        msg = str(e.value)
        assert f"output_dir {str(out)!r} is in use by another okd run (pid {proc.pid} on " in msg, msg
        assert "\n" not in msg and "choose another output_dir" in msg
        with run_lock(out, enabled=False) as path:  # non-main processes of a launch take no lock
            assert path is None
    finally:
        proc.kill()  # SIGKILL: the kernel drops the flock; the file keeps the dead holder's name
        proc.wait()
    info = json.loads((out / LOCK_NAME).read_text())
    assert info["pid"] == proc.pid
    import logging

    with caplog.at_level(logging.INFO, logger="okd.train.lock"), run_lock(out):  # stale: taken over at once
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"a stale lock of pid {proc.pid}" in caplog.text
    assert (out / LOCK_NAME).read_text() == ""  # released


def test_lock_is_released_on_any_exit(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with run_lock(out):
            1 / 0
    with pytest.raises(KeyboardInterrupt):
        with run_lock(out):
            raise KeyboardInterrupt
    with run_lock(out):  # free again, in this process
        with pytest.raises(OkdError, match=r"is in use by another okd run \(pid %d" % os.getpid()):
            with run_lock(out):  # nested: a second holder, even in the same process
                pass
    # a process that exits without leaving the block (SIGTERM's default action) releases it too
    proc = _hold(out, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    with run_lock(out):
        pass


def test_lock_without_flock_uses_the_pid(tmp_path, monkeypatch):
    """On a filesystem without flock the file itself is the lock; a dead holder's file is replaced."""
    import errno

    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "x"}))
    with run_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(OkdError, match=r"is in use by another okd run \(pid %d" % os.getpid()):
            with run_lock(out):
                pass
    assert not (out / LOCK_NAME).exists()


def test_lock_on_an_unwritable_output_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OkdError, match=r"output_dir '.*a_file/run' is not writable \(Not a directory\)"):
        with run_lock(tmp_path / "a_file" / "run"):
            pass


# --------------------------------------------------------------------------- failed saves

class _Acc(SimpleNamespace):
    """The part of an Accelerator a single-process checkpoint save uses."""

    def __init__(self):
        super().__init__(is_main_process=True, process_index=0, num_processes=1)

    def wait_for_everyone(self):
        pass


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, {"student": opt}, {"student": sched}


def _save(root: Path, step: int, model, opts, scheds) -> Path:
    return save_checkpoint(root, step, accelerator=_Acc(), student=model, online=None, optimizers=opts,
                           schedulers=scheds, method_state={}, state={"step": step, "position": step}, keep=2)


def _safetensors_full(*a, **k):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


def _torch_full(*a, **k):  # what torch.save raised writing to /dev/full (a real ENOSPC)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("writer, fault, reason", [
    ("save_model", lambda real: _safetensors_full, r"No space left on device"),
    ("save_model", lambda real: (lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device"))),
     r"No space left on device"),
    ("torch.save", lambda real: _torch_full, r"RuntimeError: file write failed; is the disk full\?"),
    ("save_model", lambda real: (lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))),
     r"Permission denied"),
])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, writer, fault, reason):
    model, opts, scheds = _parts()
    root = tmp_path / "run" / "checkpoints"
    _save(root, 2, model, opts, scheds)
    if writer == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", fault(torch.save))
    else:
        monkeypatch.setattr(ckpt, writer, fault(getattr(ckpt, writer)))
    with pytest.raises(OkdError) as e:
        _save(root, 4, model, opts, scheds)
    msg = str(e.value)
    assert msg.startswith(f"could not save the checkpoint of step 4 in {str(root)!r} (")
    assert "the previous checkpoint step-0000002 is intact (free disk space or choose another output_dir)" in msg
    import re

    assert re.search(reason, msg) and "\n" not in msg, msg
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000002"]
    assert not list(root.glob(".tmp-*"))


def test_a_save_that_cannot_start(tmp_path):
    (tmp_path / "a_file").write_text("")
    model, opts, scheds = _parts()
    with pytest.raises(OkdError, match=r"could not save the checkpoint of step 1 in '.*a_file/checkpoints' "
                                       r"\((Not a directory|File exists)\); no checkpoint saved"):
        _save(tmp_path / "a_file" / "checkpoints", 1, model, opts, scheds)


def test_a_second_ctrl_c_during_a_save_is_not_swallowed(tmp_path, monkeypatch):
    model, opts, scheds = _parts()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "checkpoints", 1, model, opts, scheds)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_write_guard(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(OkdError, match=r"could not write the trained student in '.*student' \(No space left on "
                                       r"device\); free disk space"):
        with write_guard("the trained student", tmp_path / "student"):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    with pytest.raises(KeyboardInterrupt), write_guard("x", tmp_path):
        raise KeyboardInterrupt
    with write_guard("x", tmp_path):
        (tmp_path / "ok").write_text("fine")


# --------------------------------------------------------------------------- damaged checkpoints

def _flip_last_byte(f):
    data = f.read_bytes()
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("name, damage, expected", [
    ("optim.pt", lambda f: f.write_bytes(f.read_bytes()[:100]), r"optim\.pt: 100 bytes, written with \d+"),
    ("optim.pt", lambda f: f.unlink(), r"optim\.pt: missing"),
    ("student.safetensors", lambda f: f.write_bytes(f.read_bytes()[:-8]), r"student\.safetensors: \d+ bytes"),
    ("student.safetensors", _flip_last_byte, r"student\.safetensors: its contents changed since it was written"),
    ("state.json", lambda f: f.write_text('{"step": '), r"state\.json: JSONDecodeError"),
    ("method.pt", lambda f: f.write_bytes(b""), r"method\.pt: 0 bytes"),
    ("rng-0.pt", _flip_last_byte, r"rng-0\.pt: its contents changed"),
    ("rng-0.pt", lambda f: f.unlink(), r"rng-0\.pt: missing"),
    ("manifest.json", lambda f: f.unlink(), r"manifest\.json: missing"),
    ("manifest.json", lambda f: f.write_text("[]"), r"manifest\.json: not the manifest okd writes"),
])
def test_damaged_checkpoint_is_not_a_config_mismatch(tmp_path, name, damage, expected):
    """Whichever file of a checkpoint is damaged or missing is named (the manifest's sizes and sha256), as
    damage, not as a config mismatch; the checkpoint before it still loads."""
    from okd.train.checkpoint import DamagedCheckpoint

    model, opts, scheds = _parts()
    root = tmp_path / "checkpoints"
    _save(root, 1, model, opts, scheds)
    last = _save(root, 2, model, opts, scheds)
    damage(last / name)
    with pytest.raises(DamagedCheckpoint) as e:
        load_checkpoint(last, student=model, online=None, optimizers=opts, schedulers=scheds)
    import re

    msg = str(e.value)
    assert re.fullmatch(rf"checkpoint '.*step-0000002' is damaged \({expected}.*\)", msg), msg
    assert "cannot be resumed with this config" not in msg
    state, _ = load_checkpoint(root / "step-0000001", student=model, online=None, optimizers=opts, schedulers=scheds)
    assert state["step"] == 1


def test_checkpoint_of_another_model_is_still_a_mismatch(tmp_path):
    model, opts, scheds = _parts()
    last = _save(tmp_path / "checkpoints", 1, model, opts, scheds)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.raises(OkdError, match=r"cannot be resumed with this config \(RuntimeError: Error\(s\) in loading"):
        load_checkpoint(last, student=other, online=None, optimizers=opts, schedulers=scheds)


def test_save_clock_is_due_by_time_not_by_steps():
    from okd.train.checkpoint import SaveClock

    now = {"t": 1000.0}
    clock = SaveClock(10, clock=lambda: now["t"])
    acc = _Acc()
    assert not clock.due(acc)
    now["t"] += 599
    assert not clock.due(acc)
    now["t"] += 1
    assert clock.due(acc)
    clock.saved()
    assert not clock.due(acc)
    now["t"] += 10**6
    assert not SaveClock(0, clock=lambda: now["t"]).due(acc)  # 0: off


def test_save_every_minutes_default():
    from okd.config import build_config

    cfg = build_config({}, [])
    assert cfg.train.save_every == 0 and cfg.train.save_every_minutes == 10
    with pytest.raises(OkdError, match=r"train\.save_every_minutes': must be >= 0"):
        build_config({}, ["train.save_every_minutes=-1"])
