"""Cross-tokenizer distillation (DESIGN.md §7): teacher and student with different tokenizers.

Each side formats and tokenizes the example with its own template and tokenizer; nothing is paired
by position. The room has two halves that meet only in index tensors:
  - alignment (`align`, `vocab`; preprocessing, once per example): tokens -> byte spans of the shared
    text (`token_byte_spans`) -> groups of tokens covering the same bytes on both sides
    (`align_spans`) -> flat row indices for a batch (`batch_groups`); and, once per model pair, the
    token pairs both vocabularies spell the same (`shared_vocab`).
  - losses (`merge`, `losses`; on logits, chunked, pure torch): a group's log-probability by the
    chain rule (`group_logprobs`), ULD (`uld_loss`, `span_uld_loss`), the hybrid of an exact
    shared-vocabulary divergence and ULD (`hybrid_loss`), and a span-likelihood term (`span_loss`).
With identical tokenizers every group is 1-1, the shared vocabulary is the whole vocabulary, and
`hybrid_loss` is okd.losses.token_divergence at every position (values and gradients).
"""

from okd.crosstok.align import (Alignment, ByteSpans, Groups, align_spans, batch_groups, positional_pairs,
                                token_byte_spans)
from okd.crosstok.losses import (ULD_TOP_K, PerGroup, hybrid_loss, sorted_l1, sorted_probs, span_divergence,
                                 span_loss, span_uld_loss, uld_loss)
from okd.crosstok.merge import group_logprobs, span_logprobs, token_logprobs
from okd.crosstok.vocab import SharedVocab, is_byte_level, shared_vocab, token_bytes

__all__ = ["ULD_TOP_K", "Alignment", "ByteSpans", "Groups", "PerGroup", "SharedVocab", "align_spans",
           "batch_groups", "group_logprobs", "hybrid_loss", "is_byte_level", "positional_pairs", "shared_vocab",
           "sorted_l1", "sorted_probs", "span_divergence", "span_logprobs", "span_loss", "span_uld_loss",
           "token_byte_spans", "token_bytes", "token_logprobs", "uld_loss"]
