"""A group's log-probability by the chain rule.

A group covers the text piece s = y_a … y_b on one side. Its probability given everything before it is

    log P(s | y_<a) = Σ_{t=a..b} log p(y_t | y_<t),

each conditional taken from that model's own teacher-forced forward pass over its own tokens. The sum
is the answer: it is never re-normalised afterwards (P(s | ·) is a probability of one string among all
strings, not of one entry of a distribution over groups), and the later tokens' terms are conditionals,
not marginals. One log-softmax row per token, then a segment sum (index_add): no loop over tokens.
"""

from __future__ import annotations

import torch

from okd.losses.chunked import CHUNK_SIZE


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, *, temperature: float = 1.0,
                   chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """log softmax(z_r / τ)[labels[r]] for each row r of `rows` [n] -> [n] (float32, float64 stays).

    logits [N, V] (a row predicts the token labels[row]), labels [N] long. Chunked over rows, so at
    most chunk_size float32 rows of V exist beyond the input.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = []
    for r, z in zip(torch.split(rows, chunk_size), row_chunks(logits, rows, chunk_size)):
        z = z.to(dtype)
        z = z / temperature if temperature != 1.0 else z
        out.append(z.gather(-1, labels[r][:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=dtype)


def row_chunks(logits: torch.Tensor, rows: torch.Tensor, chunk_size: int):
    """logits[rows] in chunks of rows. Without autograd, one chunk at a time; with it, one index_select
    split in chunks (its backward is one concatenation, not a full-size zero gradient per chunk)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return torch.split(logits.index_select(0, rows), chunk_size)
    return (logits.index_select(0, r) for r in torch.split(rows, chunk_size))


def span_logprobs(token_lp: torch.Tensor, token_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log P(group g) = Σ of its tokens' conditional log-probabilities -> [num_groups] (segment sum).

    token_lp [n], token_group [n] long in [0, num_groups) (e.g. Groups.t_tokens' log-probs with
    Groups.t_token_group). Differentiable in token_lp.
    """
    return token_lp.new_zeros(num_groups).index_add(0, token_group, token_lp)


def group_logprobs(logits, labels, tokens, token_group, num_groups, *, temperature=1.0, chunk_size=CHUNK_SIZE):
    """span_logprobs of one model from its logits: tokens = Groups.t_tokens (or s_tokens), token_group alike."""
    lp = token_logprobs(logits, labels, tokens, temperature=temperature, chunk_size=chunk_size)
    return span_logprobs(lp, token_group, num_groups)
