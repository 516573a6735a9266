"""What every method shares: the models it trains with, and the scored-token plumbing.

A method is a composition of a data source (ground truth, teacher or student samples), a loss and a
teacher mode (none, frozen, online). The trainer owns the loop, optimizers and checkpoints; a method
only turns a batch into losses, keyed by the optimizer that must step on them:
`{"student": L_s}` or, with the online teacher, `{"online": L_t, "student": L_s}`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch

from okd.config import Config
from okd.models.loading import final_hidden, output_weight


@dataclass
class Models:
    student: Any
    teacher: Any | None  # a PeftModel when the teacher is online, else a frozen causal LM or None
    tokenizer: Any
    vocab_size: int  # shared tokenizer size; logits past it (padded heads) are dropped
    # gathered(params): a context in which these weights can be read outside a forward (ZeRO-3 gathers them)
    gathered: Callable[[list], ContextManager] = lambda params: contextlib.nullcontext()
    teacher_cache: Any | None = None  # okd.models.teacher_cache.TeacherCache when teacher.cache is set


@dataclass
class Scored:
    """The positions that are scored: hidden state at t predicts labels[t + 1].

    `index` holds their flat positions in [B·(T−1)], row-major (the boolean mask's order). The trainer
    computes it on the CPU before the batch is copied (`scored_index`), so that selecting the rows on
    a GPU needs no device read (a boolean mask's result has a data-dependent size, which syncs).
    """

    index: torch.Tensor  # [N] long, flat positions into [B, T-1]
    targets: torch.Tensor  # [N] token ids

    @classmethod
    def from_labels(cls, labels: torch.Tensor, index: torch.Tensor | None = None) -> "Scored":
        flat = labels[:, 1:].reshape(-1)
        if index is None:
            index = (flat != -100).nonzero().squeeze(1)
        index = index.to(labels.device)
        return cls(index=index, targets=flat.index_select(0, index))

    @classmethod
    def of(cls, batch: dict) -> "Scored":
        return cls.from_labels(batch["labels"], batch.get("scored_index"))

    def select(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, H] -> [N, H] rows at the scored positions."""
        return hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, self.index)

    def pick(self, values: torch.Tensor) -> torch.Tensor:
        """[B, T] per-position values -> [N] at the scored positions (value at t+1 for hidden state t)."""
        return values[:, 1:].reshape(-1).index_select(0, self.index)


def scored_index(labels: torch.Tensor) -> torch.Tensor:
    """Scored.index of a CPU batch (what the trainer attaches as batch["scored_index"])."""
    return (labels[:, 1:].reshape(-1) != -100).nonzero().squeeze(1)


def scored_hidden(model, batch: dict, scored: Scored, side: str = "") -> torch.Tensor:
    """Final hidden states at the scored rows of `batch[side + "input_ids"]` (side "teacher_": the teacher's own
    tokens of a cross-tokenizer batch)."""
    # the trainer's own batches are right-padded (marked by scored_index): real tokens never attend to
    # the padding after them, so the causal mask alone is exact and the padding-mask work is skipped
    mask = None if f"{side}scored_index" in batch else batch[f"{side}attention_mask"]
    return scored.select(final_hidden(model, batch[f"{side}input_ids"], mask))


def head(model, vocab_size: int) -> torch.Tensor:
    """The output matrix cut to the shared vocabulary (a view, so gradients still reach it)."""
    return output_weight(model)[:vocab_size]


def ce_sum(model, batch: dict, vocab_size: int, chunk_size: int) -> tuple[torch.Tensor, int]:
    """(Σ CE over the batch's labelled tokens, their count), logits formed chunk by chunk: SFT's loss,
    seqkd's on teacher answers, minillm's language-modelling term."""
    scored = Scored.of(batch)
    h = scored_hidden(model, batch, scored)
    return ce_of_hidden(h, head(model, vocab_size), scored.targets, chunk_size), len(scored.targets)


def ce_of_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Σ CE of the targets from hidden states and an output matrix, logits formed chunk by chunk."""
    from okd.losses import chunked_pair_loss, token_ce

    loss, _ = chunked_pair_loss(lambda zs, zt, y: (token_ce(zs, y), None), hidden, weight, None, None,
                                labels=targets, chunk_size=chunk_size)
    return loss


@dataclass
class Method:
    """Base: ground-truth data, no state. Subclasses override `losses` (and `prepare`)."""

    cfg: Config
    models: Models
    metrics: dict = field(default_factory=dict)  # per-step extras for metrics.jsonl

    name = "base"

    @property
    def tau2(self) -> float:
        m = self.cfg.method
        return m.temperature**2 if m.tau_squared else 1.0

    def prepare(self, batch: dict, step: int) -> dict:
        """The batch the loss sees; on-policy methods replace it with generated sequences."""
        return batch

    def losses(self, batch: dict, norm: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # Methods that adapt to validation (distillm) override this; the trainer calls it with the
    # result of each evaluation ({"valid_loss": ...}), and once before step 1 if validate_at_start.
    validate_at_start = False

    def on_validation(self, metrics: dict) -> None:
        pass

    # Extra validation metrics: sums over a validation batch's scored tokens (the trainer divides them by
    # the number of scored tokens), and values computed once per validation.
    def validation_sums(self, batch: dict, student_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def validation_extras(self) -> dict[str, float]:
        return {}

    # Methods with state (replay buffers, samplers) save it here; checkpoints call these.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
