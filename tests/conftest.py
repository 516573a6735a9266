"""Shared fixtures: tiny random teacher/student directories and a small instruction data file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny models are overhead-bound: one thread is as fast, and much faster when the 2 cores are shared.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """A 4-layer llama teacher and a 2-layer llama student sharing the byte tokenizer."""
    from okd.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {
        "teacher": save_tiny(root / "teacher", "llama", layers=4, hidden=64, seed=1),
        "student": save_tiny(root / "student", "llama", layers=2, hidden=32, seed=2),
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """32 short Alpaca-style records (short, so byte-level sequences stay small)."""
    root = tmp_path_factory.mktemp("data")
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    rows = []
    for i in range(32):
        a, b = words[i % 8], words[(i * 3 + 1) % 8]
        rows.append({"instruction": f"Say {a} and {b}.", "input": "" if i % 2 else f"n={i}",
                     "output": f"{a} {b} {a}."})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def base_overrides(tiny_dirs, tiny_data, tmp_path) -> list[str]:
    return [
        f"teacher.path={tiny_dirs['teacher']}", f"student.path={tiny_dirs['student']}",
        f"data.train={tiny_data}", f"data.valid={tiny_data}", "data.max_length=128",
        "train.batch_size=4", "train.max_steps=3", "train.lr=1e-3", "online.rank=4",
        f"output_dir={tmp_path / 'run'}",
    ]


@pytest.fixture(scope="session")
def uneven_data(tmp_path_factory) -> Path:
    """Responses of very different lengths (1 word vs ~40 words), so a mean of per-micro-batch means
    and the per-token mean differ a lot: the loss normalisation shows in the weights."""
    rows = []
    for i in range(16):
        words = ["red"] if i % 2 else ["blue", "green", "cat", "dog", "sun"] * 8
        rows.append({"instruction": f"Item {i}.", "input": "", "output": " ".join(words)})
    path = tmp_path_factory.mktemp("uneven") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    """The byte-level tokenizer of the tiny models (test_data.py has its own `tok`)."""
    from okd.models.tiny import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture(scope="module")
def prompts(tok):
    """Four prompts of different lengths for the generation tests."""
    texts = ["Hello there", "Write a poem about the sea, please.", "x", "Two words"]
    return [tok.encode(t) for t in texts]
