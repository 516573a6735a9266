"""Token strings as the bytes they stand for, and the vocabulary two tokenizers share.

Two conventions cover the tokenizers in use:
  - byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): every byte is written as one printable character
    (GPT-2's `bytes_to_unicode`: printable bytes as themselves, the other 68 shifted to U+0100...,
    so a space is `Ġ` and a newline `Ċ`); a token's bytes are its characters mapped back.
  - SentencePiece (Gemma, Llama 2, Mistral): a space is written `▁`, other text as itself (UTF-8),
    and the byte-fallback tokens `<0xNN>` stand for the single byte NN.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, NamedTuple

import torch


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(rest)})
    return table


def _byte_fallback(token: str) -> int | None:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            return None
    return None


def token_bytes(token: str, byte_level: bool) -> bytes:
    """The bytes of text a token string stands for, under the byte-level or the SentencePiece convention.

    A byte-level token with a character outside the byte alphabet (an added token written in plain
    text) is taken as its UTF-8 encoding.
    """
    if byte_level:
        table = _byte_decoder()
        if all(ch in table for ch in token):
            return bytes(table[ch] for ch in token)
        return token.encode()
    byte = _byte_fallback(token)
    return bytes([byte]) if byte is not None else token.replace("▁", " ").encode()


def is_byte_level(vocab) -> bool:
    """Whether a vocabulary (token strings) writes spaces as `Ġ` (byte-level) rather than `▁`."""
    tokens = list(vocab)
    return sum("Ġ" in t for t in tokens) > sum("▁" in t for t in tokens)


class SharedVocab(NamedTuple):
    """Token pairs with the same bytes: teacher id teacher[m] <-> student id student[m], one-to-one."""

    teacher: torch.Tensor  # [M] long, increasing
    student: torch.Tensor  # [M] long


def _by_bytes(vocab: Mapping[str, int], byte_level: bool) -> dict[bytes, int]:
    # several ids may spell the same bytes (a SentencePiece `▁` and `<0x20>`): keep the ordinary token,
    # the one the tokenizer emits, then the lowest id, so the mapping stays one-to-one
    out: dict[bytes, int] = {}
    for tok, i in sorted(vocab.items(), key=lambda kv: (_byte_fallback(kv[0]) is not None, kv[1])):
        out.setdefault(token_bytes(tok, byte_level), i)
    return out


def shared_vocab(teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int], *,
                 teacher_byte_level: bool | None = None, student_byte_level: bool | None = None) -> SharedVocab:
    """The token pairs whose strings stand for the same bytes (`▁world` <-> `Ġworld`), built once.

    vocabularies: token string -> id (a tokenizer's get_vocab()); conventions detected when not given.
    """
    tb = is_byte_level(teacher_vocab) if teacher_byte_level is None else teacher_byte_level
    sb = is_byte_level(student_vocab) if student_byte_level is None else student_byte_level
    t, s = _by_bytes(teacher_vocab, tb), _by_bytes(student_vocab, sb)
    pairs = sorted((t[b], s[b]) for b in t.keys() & s.keys())
    ids = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return SharedVocab(teacher=ids[:, 0].contiguous(), student=ids[:, 1].contiguous())
