"""DistiLLM (Ko et al., ICML 2024, arXiv 2402.03898): skew KL + adaptive off-policy student data.

Loss: skew KL  KL(p ‖ α·p + (1−α)·q)  or skew reverse KL  KL(q ‖ (1−α)·p + α·q)
(`method.divergence` skl | srkl, α = `method.alpha` = 0.1), τ²-scaled like every KD loss.

Data ("adaptive off-policy approach", §3.2, as the authors' finetune.py implements it):
  P = probability that a micro-batch is student-generated ("adaptive_threshold"): starts at
      `method.replay_init_prob` (their init-threshold 0.0).
  Each micro-batch draws r ~ U(0, 1) from the method's own seeded generator:
    r < P·(1 − step/max_steps)              fresh student samples for this batch's prompts; they are
    or (r < P and buffer not full)          pushed into the replay buffer and trained on;
    elif r < P                              a batch drawn uniformly from the replay buffer
                                            (without replacement, as many rows as the batch);
    else                                    the ground-truth batch.
    So student data comes with probability P, and the share of it that is regenerated rather than
    replayed decays linearly from 1 to 0 over training (their default "decreasing" replay ratio);
    the buffer always fills up first. It is a FIFO of `method.replay_size` sequences (capacity 1000).
  Scheduler (their "adaptive SGO scheduler"): a reference validation loss L_ref is taken before
  step 1 (DistiLLM evaluates at step 0). At every evaluation, if L_valid ≥ L_ref + ε
  (ε = `method.replay_loss_eps` = 0.1), then P ← min(P + `replay_step`, `replay_max_prob`) and
  L_ref ← L_valid; otherwise nothing changes (L_ref is NOT lowered when the loss improves). The
  validation loss is the trainer's (student CE on data.valid), as in DistiLLM; so P moves only with
  `data.valid` set and `train.eval_every` > 0 (DistiLLM evaluates once per epoch). Without them P
  stays at its initial value, and with the default 0.0, distillm is skew KL on the ground truth.

State (buffer, P, L_ref, generator) is in the checkpoint as lists/numbers/tensors.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch

from okd.methods.onpolicy import OnPolicyKD

log = logging.getLogger(__name__)


@dataclass(eq=False)
class DistiLLM(OnPolicyKD):
    name = "distillm"
    validate_at_start = True  # the reference loss L_ref

    def __post_init__(self):
        super().__post_init__()
        m = self.cfg.method
        self.rng = torch.Generator().manual_seed(self.cfg.train.seed)
        self.prob = float(m.replay_init_prob)
        self.ref_loss: float | None = None
        self.buffer: deque[tuple[list[int], list[int]]] = deque(maxlen=m.replay_size)  # (prompt, target)
        if not self.cfg.data.valid or not self.cfg.train.eval_every:
            log.warning("distillm raises its student-data probability when the validation loss worsens; "
                        "without data.valid and train.eval_every it stays at method.replay_init_prob=%g",
                        self.prob)

    def source(self, step: int) -> str:
        """'fresh', 'replay' or 'ground_truth' for this micro-batch (DistiLLM's rule, module doc)."""
        r = torch.rand((), generator=self.rng, dtype=torch.float64).item()
        fresh_prob = self.prob * (1.0 - step / self.cfg.train.max_steps)
        if r < fresh_prob or (r < self.prob and len(self.buffer) < self.buffer.maxlen):
            return "fresh"
        if r < self.prob:
            return "replay"
        return "ground_truth"

    def prepare(self, batch, step):
        kind = self.source(step)
        self.metrics[f"{kind}_batches"] = self.metrics.get(f"{kind}_batches", 0) + 1
        self.metrics["student_data_prob"] = self.prob
        if kind == "ground_truth":
            return batch
        device = batch["input_ids"].device
        if kind == "fresh" or not self.buffer:
            prompts = self.prompts(batch)
            targets = self.student_samples(prompts)
            self.buffer.extend(zip(prompts, targets))
        else:
            k = min(len(batch["input_ids"]), len(self.buffer))
            picks = torch.randperm(len(self.buffer), generator=self.rng)[:k].tolist()
            prompts, targets = zip(*(self.buffer[i] for i in picks))
        return self.make_batch(list(prompts), list(targets), device)

    def on_validation(self, metrics):
        loss = metrics.get("valid_loss")
        if loss is None:
            return
        m = self.cfg.method
        if self.ref_loss is None:
            self.ref_loss = float(loss)
        elif loss >= self.ref_loss + m.replay_loss_eps:
            self.prob = min(self.prob + m.replay_step, m.replay_max_prob)
            self.ref_loss = float(loss)
            log.info("distillm: validation loss %.4f worsened; student-data probability now %.2f", loss, self.prob)

    def state_dict(self):
        return {"rng": self.rng.get_state(), "prob": self.prob, "ref_loss": self.ref_loss,
                "buffer_prompts": [p for p, _ in self.buffer], "buffer_targets": [t for _, t in self.buffer]}

    def load_state_dict(self, state):
        if not state:
            return
        self.rng.set_state(state["rng"])
        self.prob, self.ref_loss = float(state["prob"]), state["ref_loss"]
        self.buffer.clear()
        self.buffer.extend(zip(state["buffer_prompts"], state["buffer_targets"]))
