"""Batching: dynamic padding for training (right) and generation (left), length-grouped ordering,
and packing of several examples per row (position_ids restart at each example)."""

from __future__ import annotations

import random
from typing import Sequence

import torch

from okd.data.tokenize import IGNORE_INDEX


class Collator:
    """Pads a list of features to the longest in the batch (right padding, pad labels = -100).

    Features are {"input_ids", "labels"} (lists or 1-D tensors); without "labels" every non-pad token
    is labelled. A "prompt_len" or "example_index" present in every feature is passed through as a tensor.
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
        for key in ("prompt_len", "example_index"):  # passed through when every feature has it
            if all(key in f for f in features):
                batch[key] = torch.tensor([int(f[key]) for f in features])
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


MEGA_BATCHES = 50  # batches per sorted mega-batch in length_grouped_order


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, *,
                         mega_batches: int = MEGA_BATCHES) -> list[int]:
    """A permutation of range(len(lengths)) in which consecutive batches hold similar lengths.

    Shuffle, cut into mega-batches of `mega_batches` x batch_size, sort each by length (longest
    first), cut into batches and shuffle the batch order: little padding, still random.
    Deterministic per seed. `mega_batches=1` is a plain shuffle; a mega-batch as large as the data
    is a global sort (least padding, least randomness in which examples share a batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if mega_batches < 1:
        raise ValueError(f"mega_batches must be positive, got {mega_batches}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = mega_batches * batch_size
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


def pack_rows(lengths: Sequence[int], max_length: int, seed: int) -> list[list[int]]:
    """Indices of examples packed into rows of at most max_length tokens (first-fit decreasing),
    rows in a seeded random order. An example longer than max_length gets a row of its own.

    Packed rows are only correct when the model restarts attention at every example: pass the
    `position_ids` of `collate_packed` and NO attention_mask (transformers >= 4.54 / 5 then builds
    a block-diagonal causal mask from the position resets, for sdpa and eager attention alike).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        n = int(lengths[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(max_length - n, 0))
    random.Random(seed).shuffle(rows)
    return rows


def collate_packed(rows: list[list[dict]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows of several features each -> input_ids, labels, position_ids, attention_mask.

    position_ids restart at 0 for every example (and for the right padding, which becomes a segment
    of its own, labelled -100). `attention_mask` is 1 on real tokens for counting only: give the
    model `position_ids` and attention_mask=None, or the examples of a row attend to each other.
    No example's first token is scored across a boundary: it is a prompt token, labelled -100, and
    the scored positions are those whose NEXT label is not -100.
    """
    if not rows or any(not r for r in rows):
        raise ValueError("cannot collate an empty packed row")
    ids, labels, pos = [], [], []
    for row in rows:
        i_row, l_row, p_row = [], [], []
        for f in row:
            i = list(map(int, f["input_ids"]))
            lab = list(map(int, f["labels"])) if "labels" in f else list(i)
            if len(i) != len(lab):
                raise ValueError("a feature's input_ids and labels differ in length")
            i_row += i
            l_row += lab
            p_row += list(range(len(i)))
        ids.append(i_row)
        labels.append(l_row)
        pos.append(p_row)
    width = max(map(len, ids))
    pad = [width - len(i) for i in ids]
    return {
        "input_ids": torch.tensor([i + [int(pad_token_id)] * k for i, k in zip(ids, pad)]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * k for lab, k in zip(labels, pad)]),
        "position_ids": torch.tensor([p + list(range(k)) for p, k in zip(pos, pad)]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * k for i, k in zip(ids, pad)]),
    }
