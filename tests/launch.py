"""Helpers shared by the tests that launch real `okd train` processes (tests/test_reliability.py,
tests/test_scale_*.py): their environment, a free port, the output files they compare."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("student/model.safetensors", "online_module/adapter_model.safetensors")


def launch_env(**extra) -> dict:
    """One thread per process, offline, okd importable; WORLD_SIZE left to the launcher."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
