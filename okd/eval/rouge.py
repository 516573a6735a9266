"""ROUGE-L as in the paper and MiniLLM: rouge-score's rougeL F-measure with stemming, ×100.

rouge-score's tokenizer (the paper's, kept as the default for comparability) keeps ASCII letters and
digits only: Chinese, Cyrillic or accented text loses most of its characters, and an answer identical
to its reference can score 0. `tokenizer="unicode"` tokenises words of any script (each CJK character
a word, as CJK text has no spaces), stemming ASCII words as the default does; `reference_loss` measures
what the default drops so that evaluations can warn.
"""

from __future__ import annotations

import re
from functools import lru_cache

ROUGE_TOKENIZERS = ("default", "unicode")
# a CJK ideograph, kana or hangul syllable is one token; other runs of letters/digits (any script) are words
_UNICODE_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+")


class UnicodeTokenizer:
    """rouge-score's Tokenizer interface (`tokenize(text) -> list[str]`), for words of every script."""

    def __init__(self):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = _UNICODE_TOKEN.findall(text.lower())
        # the default stems words longer than 3 characters; only ASCII ones here (Porter is for English)
        return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


@lru_cache(maxsize=2)
def _scorer(tokenizer: str = "default"):
    from rouge_score import rouge_scorer

    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"ROUGE tokenizer {tokenizer!r}: use one of {', '.join(ROUGE_TOKENIZERS)}")
    custom = UnicodeTokenizer() if tokenizer == "unicode" else None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=custom)


def rouge_l_per_example(predictions: list[str], references: list[str], tokenizer: str = "default") -> list[float]:
    """ROUGE-L F1 × 100 of each prediction against its reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = _scorer(tokenizer)
    # rouge-score's signature is score(target, prediction)
    return [100.0 * scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[str], tokenizer: str = "default") -> float:
    """Mean ROUGE-L F1 × 100 over examples (0.0 for an empty list)."""
    scores = rouge_l_per_example(predictions, references, tokenizer)
    return sum(scores) / len(scores) if scores else 0.0


def reference_loss(references: list[str]) -> float:
    """The share of the references' letters, digits and symbols (whitespace aside) that rouge-score's
    default tokenizer drops: ~0.15 for English prose (its punctuation), ~1 for Chinese or Cyrillic."""
    from rouge_score.tokenize import NON_ALPHANUM_RE  # what rouge-score's tokenizer blanks out, after lowercasing

    total = kept = 0
    for ref in references:
        total += sum(not c.isspace() for c in ref)
        kept += sum(not c.isspace() for c in NON_ALPHANUM_RE.sub(" ", ref.lower()))
    return 1.0 - kept / total if total else 0.0


LOSS_WARNING = 0.5  # warn when the default tokenizer drops more than half of the references' characters


def tokenizer_warning(name: str, references: list[str], tokenizer: str) -> str | None:
    """The warning to print when the paper's tokenizer leaves little of a set's references to compare."""
    if tokenizer != "default":
        return None
    lost = reference_loss(references)
    if lost <= LOSS_WARNING:
        return None
    return (f"ROUGE-L on {name}: rouge-score's tokenizer keeps ASCII letters and digits only, and drops "
            f"{100 * lost:.0f}% of its references' characters (non-English text?), so the scores say little; "
            "score with the Unicode-aware tokenizer: --rouge-tokenizer unicode (eval.rouge_tokenizer: unicode)")
