"""Argument types and the status line shared by the `okd` subcommands."""

from __future__ import annotations

import argparse
import sys


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def torch_device(text: str) -> str:
    """argparse type: a device torch knows (cpu, cuda, cuda:1, mps, ...); whether it is present is checked by
    `check_device` when the command runs (that needs torch)."""
    import re

    if not re.fullmatch(r"[a-z_]+(:\d+)?", text or ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (e.g. cpu, cuda, cuda:1)")
    try:
        import torch

        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device torch knows (e.g. cpu, cuda, cuda:1)") from None
    return text


def check_device(device: str | None, flag: str = "--device") -> None:
    """A device named on the command line must exist on this machine."""
    if device is None:
        return
    import torch

    from okd.errors import OkdError

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise OkdError(f"{flag} {device}: this machine has no CUDA device (torch {torch.__version__}"
                           f"{', a CPU build' if torch.version.cuda is None else ''}); use {flag} cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise OkdError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise OkdError(f"{flag} {device}: MPS is not available on this machine; use {flag} cpu")
    elif kind not in ("cpu", "cuda", "mps"):
        raise OkdError(f"{flag} {device}: okd runs on cpu, cuda or mps")


def status(msg: str) -> None:
    """A progress line on stderr (stdout keeps the tables)."""
    print(f"okd: {msg}", file=sys.stderr, flush=True)
