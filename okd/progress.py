"""Progress for long loops: tqdm's bar on a terminal, one plain line every N steps anywhere else.

A log file or a pipe (`make demo | tee demo.log`, CI, `nohup`) gets no carriage returns: `progress_bar`
returns a `LineProgress` there, which prints lines such as

    okd train [okd] step 40/200 (20%) loss=2.3141 tok_s=812 | 1m02s elapsed, ~4m08s left

every `every` steps (default: a twentieth of the total, at least 1) and at the end. Both objects offer the
subset of tqdm's interface the trainer uses: `update(n)`, `set_postfix(**kw)`, `close()`, and use as a
context manager. This module imports nothing from okd (any layer may use it) and tqdm only for a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def fmt_s(seconds: float) -> str:
    """12s, 3m04s, 1h02m."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class LineProgress:
    """One line per `every` steps on `stream` (and one at the end); nothing when `disable`."""

    def __init__(self, total: int | None = None, *, initial: int = 0, desc: str = "", every: int | None = None,
                 stream: IO[str] | None = None, disable: bool = False):
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.every = max(1, every if every else ((total or 20) - initial) // 20 or 1)
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, object] = {}
        self._start_n, self._t0 = initial, time.perf_counter()
        self._pending = False  # a line is due: printed at the next set_postfix, update or close
        self._printed_n: int | None = None

    def update(self, n: int = 1) -> None:
        if self._pending:
            self._print()
        self.n += n
        if self.n % self.every == 0 or (self.total is not None and self.n >= self.total):
            self._pending = True

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}
        if self._pending:
            self._print()

    def line(self) -> str:
        """The status line for the current step."""
        head = f"{self.desc} " if self.desc else ""
        if self.total:
            head += f"step {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            head += f"step {self.n}"
        post = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        elapsed = time.perf_counter() - self._t0
        tail = f"{fmt_s(elapsed)} elapsed"
        done = self.n - self._start_n
        if self.total and done > 0 and self.n < self.total:
            tail += f", ~{fmt_s(elapsed / done * (self.total - self.n))} left"
        return f"{head}{' ' + post if post else ''} | {tail}"

    def _print(self) -> None:
        self._pending = False
        if self.disable or self._printed_n == self.n:
            return
        self._printed_n = self.n
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._pending or (self.n > self._start_n and self._printed_n != self.n):
            self._print()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def in_notebook() -> bool:
    """A Jupyter kernel (its stderr is no terminal, but tqdm.auto draws a widget there)."""
    return "ipykernel" in sys.modules and stream_is_kernel()


def stream_is_kernel() -> bool:
    return type(sys.stderr).__module__.startswith("ipykernel")


def progress_bar(total: int | None = None, *, initial: int = 0, desc: str = "", disable: bool = False,
                 every: int | None = None, stream: IO[str] | None = None, **tqdm_kwargs):
    """tqdm's bar when `stream` (stderr by default) is a terminal or a notebook, else a LineProgress
    printing every `every` steps. `disable` silences both. Extra keyword arguments go to tqdm only."""
    if is_terminal(stream) or (stream is None and in_notebook()):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=disable, file=stream, **tqdm_kwargs)
    return LineProgress(total, initial=initial, desc=desc, every=every, stream=stream, disable=disable)
