"""On-policy KD: the student's own samples, scored by the teacher (imitkd, gkd).

imitkd: every batch is replaced by the student's responses to its prompts; loss τ²·D(p, q) on
  them, D = fkl by default (the "ImitKD" baseline of MiniLLM/DistiLLM: student-generated outputs,
  teacher-scored, forward KL).
gkd (Agarwal et al. 2024; TRL's GKDTrainer): with probability λ = `method.lmbda` a micro-batch is
  student-generated, else it is the ground truth; loss jsd(β) with β = `method.beta` (β=0 is fkl,
  β=1 rkl). The coin comes from its own seeded generator (state in the checkpoint), so it neither
  depends on nor disturbs the global RNG, and all processes draw the same sequence of coins.

The loss on a prepared batch is exactly the ground-truth methods' loss (okd.methods.kd / okd), so
`method.divergence`, `method.ce_weight` and `method.teacher` compose as for fkd/rkd/jsd/tvd. With
`method.teacher: online` the online module's loss is computed on whatever sequences the batch holds:
on student samples its CE anchor (1−α)·CE_teacher(y) then pulls the teacher toward the student's
text, not the data; that is what this composition means, use it knowingly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from okd.methods.base import Method
from okd.methods.kd import FrozenTeacherKD
from okd.methods.okd import OnlineTeacherKD
from okd.methods.rollout import batch_prompts, build_batch, sample, targets_of


@dataclass(eq=False)
class OnPolicyKD(Method):
    """imitkd, and the base of the methods that score student samples with a KD divergence."""

    name = "imitkd"

    def __post_init__(self):
        loss_cls = OnlineTeacherKD if self.cfg.method.resolved_teacher == "online" else FrozenTeacherKD
        self.kd = loss_cls(cfg=self.cfg, models=self.models)

    def count_generated(self, n: int) -> None:
        self.metrics["generated_tokens"] = self.metrics.get("generated_tokens", 0) + int(n)

    def prompts(self, batch: dict) -> list[list[int]]:
        return batch_prompts(batch, self.cfg.data.max_prompt_length, self.models.tokenizer.bos_token_id)

    def make_batch(self, prompts, targets, device) -> dict:
        tok = self.models.tokenizer
        return build_batch(prompts, targets, pad_id=tok.pad_token_id, max_length=self.cfg.data.max_length,
                           device=device)

    def student_samples(self, prompts: list[list[int]]) -> list[list[int]]:
        """The student's responses (+EOS where it stopped) to `prompts`: the on-policy data."""
        result = sample(self.models.student, self.models.tokenizer, prompts, self.cfg,
                        vocab_limit=self.models.vocab_size)
        self.count_generated(result.num_tokens)
        return targets_of(result, self.models.tokenizer.eos_token_id)

    def student_batch(self, batch: dict) -> dict:
        prompts = self.prompts(batch)
        return self.make_batch(prompts, self.student_samples(prompts), batch["input_ids"].device)

    def prepare(self, batch, step):
        return self.student_batch(batch)

    def losses(self, batch, norm):
        return self.kd.losses(batch, norm)


@dataclass(eq=False)
class GKD(OnPolicyKD):
    name = "gkd"

    def __post_init__(self):
        super().__post_init__()
        self.coin = torch.Generator().manual_seed(self.cfg.train.seed)

    def prepare(self, batch, step):
        # TRL: `if random.random() <= lmbda` per training step; `<` so that λ=0 never samples
        on_policy = torch.rand((), generator=self.coin).item() < self.cfg.method.lmbda
        self.metrics["on_policy_batches"] = self.metrics.get("on_policy_batches", 0) + int(on_policy)
        return self.student_batch(batch) if on_policy else batch

    def state_dict(self):
        return {"coin": self.coin.get_state()}

    def load_state_dict(self, state):
        if "coin" in state:
            self.coin.set_state(state["coin"])
