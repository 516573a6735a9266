"""Teacher-forced analyses on reference responses (the paper's §IV-A study).

At every scored response token of the references (labels != -100), with both models reading the
same ground-truth prefix:
- top-1 agreement: argmax of the student's logits equals the teacher's;
- KL(p‖q) at temperature `temperature` (default 1), exact over the shared vocabulary;
- logit std: standard deviation of the raw logits over the shared vocabulary (population std), for
  the student and the teacher;
- difficulty UNC = 1 − p_teacher(ground-truth token), at temperature 1 whatever `temperature` is, so
  the buckets depend on the teacher and the data only and are the same tokens for every student.

Buckets: by default tertiles of UNC over all scored tokens (easy = lowest third, medium, hard =
highest third; equal counts up to ties), because a trained teacher puts most tokens near UNC 0 and a
fixed grid would leave the hard bucket nearly empty. `thresholds=(lo, hi)` uses fixed cut points
instead: easy UNC ≤ lo < medium ≤ hi < hard. The cut points used are returned.
"""

from __future__ import annotations

import torch

from okd.eval.exposure import forward_logits, shared_vocab
from okd.losses import token_divergence

BUCKETS = ("easy", "medium", "hard")
METRICS = ("kl", "top1_agreement", "student_logit_std", "teacher_logit_std", "unc")


def _token_stats(zs: torch.Tensor, zt: torch.Tensor, targets: torch.Tensor, temperature: float,
                 chunk: int = 1024) -> torch.Tensor:
    """[n, 5] float64 rows of METRICS for scored positions with logits zs, zt [n, V]."""
    rows = []
    for i in range(0, zs.shape[0], chunk):
        s, t, y = zs[i:i + chunk].float(), zt[i:i + chunk].float(), targets[i:i + chunk]
        kl = token_divergence("fkl", s, t, temperature=temperature)
        agree = (s.argmax(-1) == t.argmax(-1)).float()
        p_gt = torch.softmax(t, -1).gather(-1, y[:, None]).squeeze(-1)
        rows.append(torch.stack([kl, agree, s.std(-1, unbiased=False), t.std(-1, unbiased=False),
                                 1.0 - p_gt], -1).double().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, len(METRICS), dtype=torch.float64)


def collect_token_stats(student, teacher, batches, *, temperature: float = 1.0,
                        vocab_size: int | None = None) -> torch.Tensor:
    """Per-token METRICS [n_tokens, 5] over batches of dict(input_ids, attention_mask, labels).

    labels are unshifted (label at position i is the token at i, -100 where not scored), as built
    by okd.data's Collator.
    """
    V = shared_vocab(student, teacher, vocab_size)
    parts = []
    with torch.no_grad():
        for batch in batches:
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            zs = forward_logits(student, ids, mask)[:, :-1, :V]
            zt = forward_logits(teacher, ids, mask)[:, :-1, :V].to(zs.device)
            targets = labels[:, 1:].to(zs.device)
            scored = targets != -100
            if targets[scored].numel() and int(targets[scored].max()) >= V:
                raise ValueError(f"reference token id {int(targets[scored].max())} outside the shared vocabulary ({V})")
            parts.append(_token_stats(zs[scored], zt[scored], targets[scored], temperature))
    return torch.cat(parts) if parts else torch.zeros(0, len(METRICS), dtype=torch.float64)


def _summary(rows: torch.Tensor) -> dict:
    out = {"tokens": int(rows.shape[0])}
    for j, name in enumerate(METRICS):
        out[name] = float(rows[:, j].mean()) if rows.shape[0] else None
    return out


def summarize(rows: torch.Tensor, thresholds: tuple[float, float] | None = None) -> dict:
    """Overall and per-bucket means of per-token METRICS (see the module doc for the buckets)."""
    unc = rows[:, METRICS.index("unc")]
    if thresholds is None:
        if unc.numel():
            lo, hi = torch.quantile(unc, torch.tensor([1 / 3, 2 / 3], dtype=unc.dtype)).tolist()
        else:
            lo = hi = 0.0
        how = "tertiles"
    else:
        lo, hi = map(float, thresholds)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"UNC thresholds must satisfy 0 <= lo <= hi <= 1, got {thresholds}")
        how = "fixed"
    masks = {"easy": unc <= lo, "medium": (unc > lo) & (unc <= hi), "hard": unc > hi}
    return {
        "overall": _summary(rows),
        "buckets": {b: _summary(rows[m]) for b, m in masks.items()},
        "bucketing": how,
        "thresholds": [lo, hi],
    }


def teacher_forced_stats(student, teacher, batches, *, temperature: float = 1.0,
                         vocab_size: int | None = None,
                         thresholds: tuple[float, float] | None = None) -> dict:
    """Top-1 agreement, KL(p‖q), logit std of both models and mean UNC, overall and by bucket.

    Returns {"overall": {...}, "buckets": {"easy": {...}, "medium": {...}, "hard": {...}},
    "bucketing": "tertiles"|"fixed", "thresholds": [lo, hi], "temperature": τ}; each {...} holds
    tokens, kl, top1_agreement (fraction), student_logit_std, teacher_logit_std, unc.
    """
    rows = collect_token_stats(student, teacher, batches, temperature=temperature, vocab_size=vocab_size)
    return {**summarize(rows, thresholds), "temperature": temperature}
