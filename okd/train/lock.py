"""One run per output directory at a time.

`run_lock(output_dir)` holds an exclusive `fcntl.flock` on `output_dir/.okd.lock` for as long as the
run lasts, and writes its holder (pid, host, start time, command) into the file for the message a
second process gets. The kernel drops a flock when its process ends, however it ends (SIGKILL, OOM
killer), so a lock left by a killed process is never in the way: the file's old content only says who
held it last, and is reported as stale. Where the filesystem has no flock (some network mounts), the
file itself is the lock: created exclusively, and taken over when its pid no longer runs on this host.

Only the main process of a multi-process launch takes it (`enabled=False` elsewhere): the processes
of one launch write into one directory together.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from okd.errors import OkdError

log = logging.getLogger(__name__)

LOCK_NAME = ".okd.lock"
# flock errors that mean "this filesystem does not do locks" rather than "someone holds it"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]}


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    return f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"


def _busy(out: Path, info: dict) -> OkdError:
    cmd = f" ({info['command']})" if info.get("command") else ""
    return OkdError(f"output_dir {str(out)!r} is in use by another okd run ({_describe(info)}{cmd}); wait for it to "
                    "finish or stop it, or choose another output_dir")


def _stale(info: dict) -> bool:
    """A holder that no longer runs: on this host, its pid is gone."""
    return bool(info.get("pid")) and info.get("host") == socket.gethostname() and not _alive(info["pid"])


def _write(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _open(out: Path) -> int:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OkdError(f"output_dir {str(out)!r} is not writable ({e.strerror}); choose another output_dir") from None


def _flock(out: Path, fd: int) -> bool:
    """True when locked, False when the filesystem cannot lock; an OkdError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _busy(out, _read(out / LOCK_NAME)) from None
        if e.errno in _NO_LOCKS:
            return False
        raise OkdError(f"output_dir {str(out)!r}: could not lock {LOCK_NAME} ({e.strerror}); choose another "
                       "output_dir") from None
    return True


def _file_lock(out: Path) -> int:
    """The fallback without flock: the file created exclusively is the lock; a stale one is replaced."""
    path = out / LOCK_NAME
    for _ in range(2):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read(path)
            if info and not _stale(info):
                raise _busy(out, info) from None
            log.warning("removing a stale lock in %s (%s is no longer running)", out, _describe(info))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    raise _busy(out, _read(path))


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, enabled: bool = True):
    """Hold `output_dir`'s lock for the body; a second holder gets an OkdError at once, naming this one.

    Creates `output_dir` if needed. Released on any exit (return, exception, Ctrl-C; the kernel releases
    it when the process is killed). Yields the lock file's path (None when not `enabled`).
    """
    if not enabled:
        yield None
        return
    out = Path(output_dir)
    fd = _open(out)
    flocked = False
    try:
        flocked = _flock(out, fd)
        if not flocked:
            os.close(fd)
            fd = -1
            fd = _file_lock(out)
        previous = _read(out / LOCK_NAME)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log.info("output_dir %s: a stale lock of %s was left behind (that process ended without releasing "
                     "it); taking it over", out, _describe(previous))
        _write(fd, _holder())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    try:
        yield out / LOCK_NAME
    finally:
        try:
            if flocked:
                os.ftruncate(fd, 0)  # released: the file stays (unlinking it would race with a new holder)
            else:
                (out / LOCK_NAME).unlink()
        except OSError:
            pass
        os.close(fd)  # closing drops the flock
