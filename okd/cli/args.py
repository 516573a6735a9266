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


def status(msg: str) -> None:
    """A progress line on stderr (stdout keeps the tables)."""
    print(f"okd: {msg}", file=sys.stderr, flush=True)
