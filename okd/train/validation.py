"""Validation inside a run: the student's CE on data.valid's responses (comparable across methods),
the method's own validation metrics (OKD's module dynamics), and optionally a quick ROUGE-L."""

from __future__ import annotations

import math

import torch

from okd.eval import quick_rouge
from okd.generation import collective, ready_to_generate
from okd.losses import token_ce


@torch.no_grad()
def evaluate(run) -> dict:
    """{"valid_loss": ..., [method metrics], ["valid_rougeL"]} over run.valid_features ({} if none)."""
    if not run.valid_features:
        return {}
    cfg, method, acc = run.cfg, run.method, run.accelerator
    student = method.models.student
    student.eval()
    total, count, extra = 0.0, 0, {}
    bs, world = cfg.train.batch_size, acc.num_processes
    # every process runs the same number of forwards (a wrapped model's forward may communicate);
    # a process past the end repeats the first batch and does not count it
    for j in range(math.ceil(len(run.valid_features) / (bs * world))):
        i = (j * world + acc.process_index) * bs
        chunk = run.valid_features[i:i + bs]
        b = {k: v.to(acc.device) for k, v in run.collate(chunk or run.valid_features[:bs]).items()}
        with acc.autocast():
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            sums = method.validation_sums(b, logits)  # the same student forward, not a second one
        if not chunk:
            continue
        ce = token_ce(logits[:, :-1, :method.models.vocab_size], b["labels"][:, 1:])
        total += float(ce.sum())
        count += int((b["labels"][:, 1:] != -100).sum())
        for k, v in sums.items():
            extra[k] = extra.get(k, 0.0) + float(v)
    keys = sorted(extra)
    sums = acc.reduce(torch.tensor([total, count] + [extra[k] for k in keys], device=acc.device,
                                   dtype=torch.float64), "sum").tolist()
    n = max(sums[1], 1)
    result = {"valid_loss": sums[0] / n, **{k: v / n for k, v in zip(keys, sums[2:])}, **method.validation_extras()}
    if cfg.train.eval_rouge and getattr(method, "valid_examples", None):
        with ready_to_generate(student) as lm:
            # sharded weights: every process samples the same answers in lockstep; else the main one alone
            if acc.is_main_process or collective(lm):
                score = quick_rouge(lm, method.models.tokenizer, method.valid_examples[:cfg.train.eval_rouge_limit],
                                    cfg.data.template, max_new_tokens=cfg.method.max_new_tokens,
                                    max_prompt_length=cfg.data.max_prompt_length)
                if acc.is_main_process:
                    result["valid_rougeL"] = score
    student.train()
    return result
