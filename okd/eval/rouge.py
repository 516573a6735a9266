"""ROUGE-L as in the paper and MiniLLM: rouge-score's rougeL F-measure with stemming, ×100."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_per_example(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 × 100 of each prediction against its reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = _scorer()
    # rouge-score's signature is score(target, prediction)
    return [100.0 * scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 × 100 over examples (0.0 for an empty list)."""
    scores = rouge_l_per_example(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0
