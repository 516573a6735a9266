"""Batching: dynamic padding for training (right) and generation (left), length-grouped ordering."""

from __future__ import annotations

import random
from typing import Sequence

import torch

from okd.data.tokenize import IGNORE_INDEX


class Collator:
    """Pads a list of features to the longest in the batch (right padding, pad labels = -100).

    Features are {"input_ids", "labels"} (lists or 1-D tensors); without "labels" every non-pad token
    is labelled. A "prompt_len" present in every feature is passed through as a tensor.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token (or use the EOS id)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [list(map(int, f["input_ids"])) for f in features]
        labels = [list(map(int, f["labels"])) if "labels" in f else list(i) for f, i in zip(features, ids)]
        if any(len(i) != len(lab) for i, lab in zip(ids, labels)):
            raise ValueError("a feature's input_ids and labels differ in length")
        width = max(map(len, ids))
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        batch = {
            "input_ids": torch.tensor([i + [self.pad_token_id] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]),
        }
        if all("prompt_len" in f for f in features):
            batch["prompt_len"] = torch.tensor([int(f["prompt_len"]) for f in features])
        return batch


def collate_prompts(prompt_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids and attention_mask, so that generation continues every row at the end."""
    if not prompt_ids:
        raise ValueError("cannot collate an empty batch of prompts")
    rows = [list(map(int, p)) for p in prompt_ids]
    width = max(map(len, rows))
    return {
        "input_ids": torch.tensor([[int(pad_token_id)] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """A permutation of range(len(lengths)) in which consecutive batches hold similar lengths.

    Shuffle, cut into mega-batches of 50 x batch_size, sort each by length (longest first), cut into
    batches and shuffle the batch order: little padding, still random. Deterministic per seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = 50 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[k:k + batch_size] for k in range(0, len(group), batch_size))
    # only the very last batch can be short; keep it last so that cutting the flat order into
    # batch_size pieces gives back exactly these batches
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    batches += tail
    return [i for b in batches for i in b]
