"""Stopping a run cleanly: Ctrl-C (SIGINT) and a scheduler's SIGTERM finish the step, save, and exit."""

from __future__ import annotations

import logging
import signal
import threading

import torch

from okd.errors import OkdError

log = logging.getLogger("okd.train.trainer")


class TrainingInterrupted(OkdError):
    """Ctrl-C or SIGTERM: the run stopped at a step boundary (checkpoint saved) or, on a second signal, at once."""

    exit_code = 130  # 128 + SIGINT; a SIGTERM'd run exits 143 (128 + SIGTERM)

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class GracefulInterrupt:
    """A first SIGINT or SIGTERM (what a cluster scheduler sends before it kills a job) only sets a
    flag, which the loop checks between steps (then saves and stops); a second one raises
    KeyboardInterrupt at once. Installed from the main thread only; a context manager."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    @property
    def flag(self) -> bool:
        return self.signum is not None

    @property
    def what(self) -> str:
        return "stopped by SIGTERM" if self.signum == signal.SIGTERM else "interrupted"

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.signum = signum
        what = "interrupt" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)", what)

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def requested(self, accelerator) -> bool:
        """Whether any process was interrupted (all processes agree, so they stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.flag
        flag = torch.tensor(float(self.flag), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item())
