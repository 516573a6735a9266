"""Aligning two tokenizations of the same text by the bytes their tokens cover, never by position.

Each side tokenizes its own formatted example; `window` names the shared text (the answer) inside it.
Positions are UTF-8 bytes from the window's start. The rules, in order:

1. Byte spans from offsets. A token's span is its character offsets in bytes. Left out (excluded):
   special tokens the tokenizer added (BOS/EOS, template tokens) and tokens reaching outside the
   window (their probability is not that of the shared text).
2. Disjoint and contiguous, exact where the token bytes are known. With `pieces` (each token's bytes,
   okd.crosstok.vocab.token_bytes) that, laid end to end, spell the shared text (byte-level BPE always;
   SentencePiece without a prepended `▁`), the spans are exactly those pieces laid end to end, from
   where the offsets say the first one starts (give or take whitespace trimmed from it): exact at every
   byte, whatever the offsets do with whitespace or split characters. Otherwise (no pieces; a prepended
   `▁`, a normaliser) the offsets are walked: bytes no token's offsets cover (a space trimmed from
   `Ġworld`'s offsets) go to the following token, where the `▁`/`Ġ` conventions put them; where
   consecutive tokens share a character (byte-level BPE splitting a multibyte character into 2+ tokens,
   all carrying the character's offsets) the cut between them is placed by the pieces' lengths, walked
   back from the character's end, if given; without pieces the character goes to the later token and
   that cut is no boundary: tokens sharing a character stay in one group (exact, only coarser).
3. Common boundaries. A group boundary is a cut both sides have at the same byte (the k-th cut at a
   byte on one side pairs with the k-th on the other, so zero-width tokens pair up too and identical
   tokenizers give 1-1 groups everywhere). Whitespace makes no difference: in a run of whitespace
   where the sides have no common cut but each has one (`Hello\\n|World` vs `Hello|\\nWorld`), their
   first cuts in the run pair up. The two sides of a group then cover the same bytes up to
   whitespace at its two ends; tokens are grouped by index ranges, so every token of a group is in it
   whole, zero-width ones (a prepended `▁`) with the group that follows them.
Tokens before the first or after the last common boundary, and excluded tokens, are in no group
and are counted as unaligned.

The alignment is preprocessing (once per example, on CPU, cacheable); `batch_groups` turns many into
the flat index tensors the losses use.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch


class ByteSpans(NamedTuple):
    """One side's tokens as byte spans of the shared text."""

    spans: torch.Tensor  # [n, 2] long: [start, end) in bytes; (-1, -1) for excluded tokens
    snapped: torch.Tensor  # [n, 2] long: both ends moved back over the whitespace before them
    boundary: torch.Tensor  # [n] bool: its start may be a group boundary (False: inside a character, no pieces)


def _window_bytes(piece: str):
    """Byte offset of each character position [len + 1], and each byte position moved back over whitespace."""
    lens = np.fromiter((len(ch.encode()) for ch in piece), dtype=np.int64, count=len(piece))
    at = np.concatenate([[0], np.cumsum(lens)])
    space = np.repeat(np.fromiter((ch.isspace() for ch in piece), dtype=bool, count=len(piece)), lens)
    pos = np.arange(at[-1] + 1)
    starts = np.concatenate([[True], ~space])  # position p is not preceded by whitespace
    return at, np.maximum.accumulate(np.where(starts, pos, 0))


def token_byte_spans(text: str, offsets, *, window: tuple[int, int] | None = None, special=None,
                     pieces: Sequence[bytes] | None = None) -> ByteSpans:
    """Byte spans of a fast tokenizer's tokens (rules 1-2 of the module docstring).

    offsets: [n, 2] character offsets into `text` (`return_offsets_mapping=True`).
    window: (start, end) characters of the shared text in `text` (default: all of it).
    special: [n] bool, the tokens the tokenizer added (`return_special_tokens_mask=True`); default:
      tokens with empty offsets. Give it for tokenizers that trim offsets (ByteLevel post-processor
      with trim_offsets=True), where a whitespace token `Ġ` has empty offsets yet is text.
    pieces: [n] each token's bytes (`token_bytes(tok, byte_level)` for the token strings), for exact
      spans at any byte.
    """
    a, b = (0, len(text)) if window is None else window
    at, snap = _window_bytes(text[a:b])
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = len(off)
    added = off[:, 0] == off[:, 1] if special is None else np.asarray(special, dtype=bool).reshape(n)
    order = np.flatnonzero(~added)
    shares = np.zeros(n, dtype=bool)  # shares a character with the text token before it
    shares[order[1:]] = off[order[:-1], 1] > off[order[1:], 0]
    keep = _keep(order, shares, ~added & (off[:, 0] >= a) & (off[:, 1] <= b), pieces is not None)
    spans, boundary = np.full((n, 2), -1, dtype=np.int64), np.zeros(n, dtype=bool)
    if len(keep):
        start, end = at[off[keep, 0] - a], at[off[keep, 1] - a]
        kept = None if pieces is None else [pieces[i] for i in keep]
        laid = None if kept is None else _laid_out(text[a:b].encode(), start[0], kept)
        if laid is not None:
            spans[keep], boundary[keep] = laid, True
        else:
            nb = None if kept is None else np.fromiter(map(len, kept), dtype=np.int64, count=len(kept))
            spans[keep, 0], spans[keep, 1] = _walk(start, end, nb)
            boundary[keep] = ~shares[keep] | (pieces is not None)
    snapped = np.where(spans >= 0, snap[spans.clip(0)], -1)
    return ByteSpans(torch.from_numpy(spans), torch.from_numpy(snapped), torch.from_numpy(boundary))


def _laid_out(data: bytes, first_start: int, pieces: list[bytes]):
    """[m, 2] spans of the pieces laid end to end where they spell `data`, or None. They start where the
    first token's offsets start, or before it (whitespace its offsets trimmed), or after it (inside its
    first character, shared with a token left out), tried in that order."""
    joined = b"".join(pieces)
    before = range(first_start - 1, max(first_start - len(pieces[0]), 0) - 1, -1)
    for x in (first_start, *before, *range(first_start + 1, first_start + 4)):  # 3: the rest of a character
        if data.startswith(joined, x):
            ends = x + np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
            return np.stack([np.concatenate([[x], ends[:-1]]), ends], axis=1)
    return None


def _keep(order, shares, inside, exact_starts):
    """Indices of the tokens kept: inside the window, and not joined by a shared character to a token
    left out (where their bytes in the window are unknown). With byte lengths a start is exact."""
    keep = inside.copy()
    if not exact_starts:
        for p in range(1, len(order)):
            keep[order[p]] &= not (shares[order[p]] and not keep[order[p - 1]])
    for p in range(len(order) - 2, -1, -1):
        keep[order[p]] &= not (shares[order[p + 1]] and not keep[order[p + 1]])
    return np.flatnonzero(keep)


def _walk(start, end, nbytes):
    """Contiguous spans from the offsets' byte spans, right to left: each token ends where its offsets
    end, but no later than where the next one starts (its offsets' start, raised to its end minus its
    byte length when known); each starts where the previous one ends (uncovered bytes go forward)."""
    lo, hi = start.copy(), end.copy()
    for i in range(len(start) - 1, -1, -1):
        if i + 1 < len(start):
            hi[i] = min(end[i], lo[i + 1])
        lo[i] = min(start[i] if nbytes is None else max(start[i], hi[i] - nbytes[i]), hi[i])
    return np.concatenate([lo[:1], hi[:-1]]), hi


class Alignment(NamedTuple):
    """Groups of one example: group g is teacher tokens teacher[g, 0]..teacher[g, 1] (inclusive) and
    student tokens student[g, 0]..student[g, 1], covering the same bytes (up to whitespace at the ends)."""

    teacher: torch.Tensor  # [G, 2] long, first and last teacher token of each group
    student: torch.Tensor  # [G, 2] long
    t_group: torch.Tensor  # [n_t] long, each teacher token's group, -1 for none
    s_group: torch.Tensor  # [n_s] long
    t_unaligned: int  # teacher tokens in no group (excluded ones included)
    s_unaligned: int


def _cuts(side: ByteSpans):
    """Kept token indices, and the cuts that may be boundaries: (cut index, byte, snapped byte);
    cut j is before kept token j, the last one after the last kept token."""
    kept = torch.nonzero(side.spans[:, 0] >= 0).flatten().numpy()
    if not len(kept):
        return kept, *(np.zeros(0, dtype=np.int64),) * 3
    spans, snapped = side.spans.numpy()[kept], side.snapped.numpy()[kept]
    pos = np.concatenate([spans[:, 0], spans[-1:, 1]])
    snap = np.concatenate([snapped[:, 0], snapped[-1:, 1]])
    ok = np.flatnonzero(np.concatenate([side.boundary.numpy()[kept], [True]]))
    return kept, ok, pos[ok], snap[ok]


def _occurrence(pos, base):
    """(byte, k) keys, k = how many earlier cuts share the byte: the k-th cut at a byte pairs with the k-th."""
    _, first, inverse = np.unique(pos, return_index=True, return_inverse=True)
    return pos * base + (np.arange(len(pos)) - first[inverse])


def _pair_cuts(t, s):
    """Pairs (teacher cut, student cut) of common boundaries (rule 3), increasing on both sides."""
    (_, tc, tp, ts), (_, sc, sp, ss) = t, s
    base = max(len(tp), len(sp)) + 1
    _, it, i_s = np.intersect1d(_occurrence(tp, base), _occurrence(sp, base), return_indices=True)
    # whitespace runs without an exact common cut: pair the first cut each side has in the run
    runs = np.setdiff1d(np.intersect1d(ts, ss), ts[it])
    ft, fs = np.searchsorted(ts, runs), np.searchsorted(ss, runs)  # first cut with that snapped byte
    pt, ps = np.concatenate([tc[it], tc[ft]]), np.concatenate([sc[i_s], sc[fs]])
    order = np.argsort(pt, kind="stable")
    pt, ps = pt[order], ps[order]
    assert (np.diff(ps) > 0).all(), "common boundaries out of order"
    return pt, ps


def _groups_of(kept, n, cuts):
    """Each token's group (-1 for none) and each group's first and last token, from paired cut indices."""
    groups = np.full(n, -1, dtype=np.int64)
    g = np.searchsorted(cuts, np.arange(len(kept)), side="right") - 1
    inside = (g >= 0) & (g < len(cuts) - 1)
    groups[kept[inside]] = g[inside]
    bounds = np.stack([kept[cuts[:-1]], kept[cuts[1:] - 1]], axis=1) if len(cuts) > 1 else np.zeros((0, 2), np.int64)
    return torch.from_numpy(groups), torch.from_numpy(bounds.astype(np.int64))


def align_spans(teacher: ByteSpans, student: ByteSpans) -> Alignment:
    """Groups of tokens covering the same text, from the two sides' byte spans (module docstring)."""
    t, s = _cuts(teacher), _cuts(student)
    pt, ps = _pair_cuts(t, s) if len(t[1]) and len(s[1]) else (np.zeros(0, np.int64),) * 2
    t_group, t_bounds = _groups_of(t[0], len(teacher.spans), pt)
    s_group, s_bounds = _groups_of(s[0], len(student.spans), ps)
    return Alignment(t_bounds, s_bounds, t_group, s_group,
                     int((t_group < 0).sum()), int((s_group < 0).sum()))


class Groups(NamedTuple):
    """The groups of a batch as flat row indices into the [N, V] logits of each model.

    A row is the distribution that PREDICTS a token (position − 1 of a causal LM's unshifted output),
    as for labels: `labels[row]` is the token itself.
    """

    t_first: torch.Tensor  # [G] long, row predicting each group's first teacher token
    t_last: torch.Tensor  # [G]
    s_first: torch.Tensor  # [G]
    s_last: torch.Tensor  # [G]
    one_to_one: torch.Tensor  # [G] bool, one token on each side
    sample: torch.Tensor  # [G] long, the example each group is from
    t_tokens: torch.Tensor  # [T] long, rows of the teacher tokens in groups
    t_token_group: torch.Tensor  # [T] long, their groups
    s_tokens: torch.Tensor  # [S] long
    s_token_group: torch.Tensor  # [S] long
    t_unaligned: int
    s_unaligned: int


def _rows(rows, n):
    return torch.arange(n) + rows if isinstance(rows, int) else torch.as_tensor(rows, dtype=torch.long)


def batch_groups(alignments: Sequence[Alignment], teacher_rows, student_rows) -> Groups:
    """Flat group indices for a batch. teacher_rows[b]: the rows predicting sample b's teacher tokens,
    one per token of its alignment ([n_t] long), or an int r0 meaning rows r0, r0 + 1, ..."""
    parts, base = [], 0
    for b, al in enumerate(alignments):
        tr, sr = _rows(teacher_rows[b], len(al.t_group)), _rows(student_rows[b], len(al.s_group))
        tin, sin = al.t_group >= 0, al.s_group >= 0
        parts.append((tr[al.teacher[:, 0]], tr[al.teacher[:, 1]], sr[al.student[:, 0]], sr[al.student[:, 1]],
                      (al.teacher[:, 0] == al.teacher[:, 1]) & (al.student[:, 0] == al.student[:, 1]),
                      torch.full((len(al.teacher),), b, dtype=torch.long),
                      tr[tin], al.t_group[tin] + base, sr[sin], al.s_group[sin] + base))
        base += len(al.teacher)
    cols = [torch.cat(c) for c in zip(*parts)] if parts else [torch.zeros(0, dtype=torch.long)] * 10
    cols[4] = cols[4].bool()
    return Groups(*cols, sum(a.t_unaligned for a in alignments), sum(a.s_unaligned for a in alignments))


def positional_pairs(teacher_rows: Sequence, student_rows: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows paired by index (the i-th scored token of each side, cut to the shorter side), as in the
    ULD paper and TRL: the reference pairing, which drifts as soon as the tokenizations differ."""
    t, s = [], []
    for tr, sr in zip(teacher_rows, student_rows):
        tr, sr = torch.as_tensor(tr, dtype=torch.long), torch.as_tensor(sr, dtype=torch.long)
        n = min(len(tr), len(sr))
        t.append(tr[:n])
        s.append(sr[:n])
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(t) if t else empty), (torch.cat(s) if s else empty)
