"""Plumbing shared by the methods that train on generated text (seqkd, imitkd, gkd, distillm, minillm).

- `batch_prompts(batch, ...)`: the prompt of every row of a Collator batch (its `prompt_len`, or the
  leading run of real tokens labelled -100), cut from the left to `data.max_prompt_length`.
- `sample(model, ...)`: batched sampling through okd.generation.generate (KV cache, left padding,
  eval mode while sampling, no gradient), with the method's `max_new_tokens`, `gen_temperature`
  (0 = greedy) and `top_p`; under FSDP or ZeRO-3 in lockstep over the processes
  (okd.generation.ready_to_generate).
  On CUDA that is a static KV cache with a compiled decode step, prompts left-padded to a multiple
  of 64 tokens (okd.generation's module doc); on CPU the dynamic cache, as before.
- `build_batch(prompts, targets, ...)`: a training batch, right-padded, labels on the response only.
  A target is the response tokens plus the EOS when the model emitted one, so a sample that ran into
  `max_new_tokens` is trained on as an unfinished answer, never taught to stop there.
"""

from __future__ import annotations

import contextlib

import torch

from okd.data import IGNORE_INDEX, left_cut


def batch_prompts(batch: dict, max_prompt_length: int | None = None, bos_id: int | None = None) -> list[list[int]]:
    ids = batch["input_ids"]
    if "prompt_len" in batch:
        lens = batch["prompt_len"].tolist()
    else:  # prompt = leading real tokens that carry no label
        is_prompt = (batch["labels"] == IGNORE_INDEX) & (batch["attention_mask"] == 1)
        lens = is_prompt.long().cumprod(1).sum(1).tolist()
    prompts = [row[:n] for row, n in zip(ids.tolist(), lens)]
    if max_prompt_length:
        prompts = [left_cut(p, max_prompt_length, bos_id) for p in prompts]
    return prompts


def targets_of(result, eos_id: int) -> list[list[int]]:
    """GenerationResult -> label tokens: the response, plus the EOS where the model stopped itself."""
    return [list(s) + ([eos_id] if f else []) for s, f in zip(result.sequences, result.finished)]


def build_batch(prompts: list[list[int]], targets: list[list[int]], *, pad_id: int, max_length: int,
                device=None) -> dict[str, torch.Tensor]:
    """prompt + target per row, right-padded; labels -100 on prompt and padding. Targets are cut so a
    row fits `max_length` (the prompt already does: it comes from an encoded training example)."""
    rows, labels, plens = [], [], []
    for p, t in zip(prompts, targets):
        t = list(t)[:max(0, max_length - len(p))]
        rows.append(list(p) + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
        plens.append(len(p))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        lab[i, :len(y)] = torch.tensor(y, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": lab.to(device),
            "prompt_len": torch.tensor(plens, device=device)}


def per_token(values: list[list[float]], prompts: list[list[int]], width: int, device=None) -> torch.Tensor:
    """Per-target-token values laid out like `build_batch` labels ([B, width], 0 elsewhere)."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, (v, p) in enumerate(zip(values, prompts)):
        v = v[:max(0, width - len(p))]
        if v:
            out[i, len(p):len(p) + len(v)] = torch.tensor(v, dtype=torch.float32)
    return out.to(device)


def autocast_for(cfg, device: torch.device):
    """Sampling under the run's mixed precision on GPU (the trainer's autocast covers only losses)."""
    from okd.precision import resolve_mixed_precision

    mp = resolve_mixed_precision(cfg.train.mixed_precision, device.type) if device.type == "cuda" else "no"
    if mp == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mp == "bf16" else torch.float16)


def sample(model, tokenizer, prompts: list[list[int]], cfg, *, vocab_limit: int, greedy: bool = False):
    """Responses of `model` to `prompts` with the method's generation settings (a GenerationResult).

    No gradient, eval mode while sampling (restored after), KV cache (static and compiled on CUDA),
    left padding, one batch.
    Sampling draws from the global torch RNG, which checkpoints save and restore, so a resumed run
    samples what the uninterrupted run would have.
    """
    from okd.generation import generate, model_device, ready_to_generate

    m = cfg.method
    # past DDP/FSDP/DeepSpeed/peft wrappers (an online module's LoRA stays active), every process in step
    with ready_to_generate(model) as lm, autocast_for(cfg, model_device(lm)):
        return generate(lm, tokenizer, prompts, max_new_tokens=m.max_new_tokens,
                        temperature=m.gen_temperature or 1.0, top_p=m.top_p,
                        greedy=greedy or m.gen_temperature == 0, batch_size=max(1, len(prompts)),
                        vocab_limit=vocab_limit)
