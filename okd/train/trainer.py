"""The one training loop, on Hugging Face Accelerate, shared by every method.

Per optimizer step: take `grad_accum` micro-batches (each process its own shard), let the method
prepare them (on-policy methods sample here), normalise every loss by the number of scored tokens
in the whole step across all processes (so accumulation and data parallelism give the same gradient
as one big batch), backward once per micro-batch, clip, then step the online module's optimizer and
then the student's (OKD Algorithm 1 order). The data order is a pure function of (seed, epoch), so
a resumed run needs only the position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from pathlib import Path

import torch

from okd.config import Config
from okd.errors import OkdError
from okd.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- set-up helpers

def prepare_output_dir(cfg: Config, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    has_run = (out / "checkpoints").is_dir() and checkpoint_dirs(out / "checkpoints") or (out / "summary.json").is_file()
    if has_run and not resume:
        raise OkdError(f"output_dir {str(out)!r} already holds a run; pass --resume to continue it or choose "
                       "another output_dir (okd never overwrites a run)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OkdError(f"output_dir {str(out)!r} is not writable ({e.strerror}); choose another output_dir") from None
    return out


def mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mp != "no" and not torch.cuda.is_available() and mp == "fp16":
        raise OkdError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    return mp


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class BatchOrder:
    """Global micro-batches of indices for epoch e: a seeded permutation (length-grouped if asked)."""

    def __init__(self, lengths: list[int], global_batch: int, seed: int, group_by_length: bool):
        self.lengths, self.global_batch, self.seed, self.group = lengths, global_batch, seed, group_by_length
        n = len(lengths)
        # drop the ragged tail so every process gets a full shard (unless the data is one batch)
        self.per_epoch = max(1, n // global_batch)
        self._epoch, self._order = None, None

    def batch(self, position: int) -> list[int]:
        epoch, i = divmod(position, self.per_epoch)
        if epoch != self._epoch:
            seed = self.seed + epoch
            if self.group:
                from okd.data import length_grouped_order
                self._order = length_grouped_order(self.lengths, self.global_batch, seed)
            else:
                g = torch.Generator().manual_seed(seed)
                self._order = torch.randperm(len(self.lengths), generator=g).tolist()
            self._epoch = epoch
        return self._order[i * self.global_batch:(i + 1) * self.global_batch]


def load_split(cfg: Config, source: str, split: str, tokenizer, limit: int | None, progress: bool):
    from okd.data import encode_examples, load_examples_with_stats

    examples, read_stats = load_examples_with_stats(source, split=split, skip_invalid=cfg.data.skip_invalid,
                                                    limit=limit)
    features, stats = encode_examples(examples, tokenizer, cfg.data.template, cfg.data.max_length,
                                      progress=progress)
    stats.update({f"read_{k}": v for k, v in read_stats.items() if k != "n"})
    return examples, features, stats


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, *, resume: bool = False, progress: bool = True) -> Path:
    """Run one training job; returns the output directory (see DESIGN.md §4 for its layout)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from okd.data import Collator
    from okd.methods import Models, build_method, method_class
    from okd.models.loading import check_compatible, load_model, load_tokenizer
    from okd.models.online import add_online_module

    tc, mode = cfg.train, cfg.method.resolved_teacher
    if not cfg.data.train:
        raise OkdError("data.train is not set; give a JSONL/JSON file, a directory or a preset (okd data list)")
    if not cfg.student.path:
        raise OkdError("student.path is not set")
    if mode != "none" and not cfg.teacher.path:
        raise OkdError(f"method {cfg.method.name!r} needs a teacher; set teacher.path")
    method_class(cfg)  # unsupported method/teacher combinations fail before any model loads
    out = prepare_output_dir(cfg, resume)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), log_with=tc.trackers or None,
                              project_dir=str(out))
    main = accelerator.is_main_process
    progress = progress and main
    set_seed(tc.seed)
    if main:
        (out / "config.yaml").write_text(cfg.to_yaml())

    # models
    tokenizer = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    teacher, vocab = None, len(tokenizer)
    if mode != "none":
        teacher = load_model(cfg.teacher)
        vocab = check_compatible(load_tokenizer(cfg.teacher), tokenizer, teacher, student)
        if mode == "online":
            teacher = add_online_module(teacher, cfg.online)
        else:
            teacher.requires_grad_(False)
    student.train()

    # data
    _, features, data_stats = load_split(cfg, cfg.data.train, "train", tokenizer, cfg.data.train_limit, progress)
    valid_examples, valid_features = [], []
    if cfg.data.valid:
        valid_examples, valid_features, _ = load_split(cfg, cfg.data.valid, "valid", tokenizer,
                                                       cfg.data.valid_limit, False)
    if data_stats.get("truncated_prompt") or data_stats.get("truncated_response"):
        log.warning("data.max_length=%d: %d prompts cut from the left, %d responses cut", cfg.data.max_length,
                    data_stats.get("truncated_prompt", 0), data_stats.get("truncated_response", 0))
    collate = Collator(tokenizer.pad_token_id)

    # optimizers: the student's, and the online module's when the teacher is online
    def adamw(params, lr, wd):
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=wd)

    optimizers = {"student": adamw(student.parameters(), tc.lr, tc.weight_decay)}
    if mode == "online":
        optimizers["online"] = adamw(teacher.parameters(), cfg.online.lr, cfg.online.weight_decay)
    schedulers = {k: get_linear_schedule_with_warmup(o, tc.warmup_steps, tc.max_steps) for k, o in optimizers.items()}

    student, optimizers["student"] = accelerator.prepare(student, optimizers["student"])
    if mode == "online":
        teacher, optimizers["online"] = accelerator.prepare(teacher, optimizers["online"])
    elif teacher is not None:
        teacher = teacher.to(accelerator.device)
    if teacher is not None:
        teacher.eval()  # no dropout in the teacher; LoRA dropout (online.dropout) is not applied
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tokenizer, vocab_size=vocab))
    method.valid_examples = valid_examples

    # resume
    state = {"step": 0, "position": 0, "tokens": 0, "generated_tokens": 0, "elapsed_s": 0.0, "skipped": 0}
    ckpt_root = out / "checkpoints"
    unwrap = accelerator.unwrap_model
    if resume and checkpoint_dirs(ckpt_root):
        last = checkpoint_dirs(ckpt_root)[-1]
        state, method_state = load_checkpoint(last, student=unwrap(student),
                                              online=unwrap(teacher) if mode == "online" else None,
                                              optimizers=optimizers, schedulers=schedulers,
                                              rank=accelerator.process_index)
        method.load_state_dict(method_state)
        _truncate_metrics(out / "metrics.jsonl", state["step"])
        log.info("resumed from %s (step %d)", last, state["step"])
    elif resume:
        log.info("no checkpoint in %s; starting from scratch", ckpt_root)

    if method.validate_at_start and valid_features and state["step"] == 0:
        method.on_validation(evaluate(cfg, method, valid_features, collate, accelerator))  # e.g. distillm's reference loss

    world, rank = accelerator.num_processes, accelerator.process_index
    order = BatchOrder([len(f["input_ids"]) for f in features], tc.batch_size * world, tc.seed,
                       cfg.data.group_by_length)
    if tc.trackers:
        accelerator.init_trackers("okd", config=json.loads(json.dumps(cfg.model_dump(mode="json"))))

    def micro_batch(position: int) -> dict:
        idx = order.batch(position)[rank * tc.batch_size:(rank + 1) * tc.batch_size]
        batch = collate([features[i] for i in idx])
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    def checkpoint():
        save_checkpoint(ckpt_root, state["step"], accelerator=accelerator, student=unwrap(student),
                        online=unwrap(teacher) if mode == "online" else None, optimizers=optimizers,
                        schedulers=schedulers, method_state=method.state_dict(), state=state,
                        keep=tc.keep_checkpoints)

    metrics_file = open(out / "metrics.jsonl", "a") if main else None
    bar = tqdm(total=tc.max_steps, initial=state["step"], desc=f"okd train [{cfg.method.name}]",
               disable=not progress, dynamic_ncols=True)
    start = time.perf_counter() - state["elapsed_s"]
    window_t, window_tokens = time.perf_counter(), 0
    final: dict = {}
    try:
        while state["step"] < tc.max_steps:
            step = state["step"]
            batches = [method.prepare(micro_batch(state["position"] + i), step) for i in range(tc.grad_accum)]
            # normalise by the scored tokens of the whole step on all processes; DDP averages the
            # gradients over processes, hence the factor `world` folded into the norm
            scored = torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
                                  device=accelerator.device, dtype=torch.float64)
            norm = max(accelerator.reduce(scored, "sum").item(), 1.0) / world
            totals: dict[str, float] = {}
            for b in batches:
                with accelerator.autocast():
                    losses = method.losses(b, norm)
                accelerator.backward(sum(losses.values()))
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + v.detach().float().item()
            state["position"] += tc.grad_accum
            if not all(math.isfinite(v) for v in totals.values()):
                for o in optimizers.values():
                    o.zero_grad(set_to_none=True)
                if tc.on_nan == "skip":
                    state["skipped"] += 1
                    log.warning("non-finite loss at step %d skipped (%d so far)", step + 1, state["skipped"])
                    continue
                kept = checkpoint_dirs(ckpt_root)
                raise OkdError(f"loss became {totals} at step {step + 1}; "
                               + (f"last good checkpoint kept at {kept[-1]}" if kept else "no checkpoint was saved")
                               + " (lower train.lr, or set train.on_nan=skip)")
            grad_norms = {}
            for key in ("online", "student"):  # module first, then the student (Algorithm 1)
                if key not in optimizers:
                    continue
                model = teacher if key == "online" else student
                if tc.max_grad_norm > 0:
                    params = [p for p in model.parameters() if p.requires_grad]
                    grad_norms[key] = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
                optimizers[key].step()
                schedulers[key].step()
                optimizers[key].zero_grad(set_to_none=True)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches) * world
            state["tokens"] += tokens
            state["generated_tokens"] += method.metrics.pop("generated_tokens", 0) * world
            state["step"] = step = step + 1
            state["elapsed_s"] = time.perf_counter() - start
            window_tokens += tokens
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.max_steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                record = {"step": step, "loss": totals["student"], "lr": schedulers["student"].get_last_lr()[0],
                          "elapsed_s": round(state["elapsed_s"], 3), "tokens": state["tokens"],
                          "tokens_per_s": round(tps, 1)}
                if "online" in totals:
                    record["loss_online"] = totals["online"]
                    record["lr_online"] = schedulers["online"].get_last_lr()[0]
                if state["generated_tokens"] or cfg.method.name in ("seqkd", "imitkd", "gkd", "distillm", "minillm"):
                    record["generated_tokens"] = state["generated_tokens"]
                record.update({f"grad_norm_{k}": round(v, 4) for k, v in grad_norms.items()})
                record.update(method.metrics)
                method.metrics.clear()
                if step == tc.max_steps or (tc.eval_every and step % tc.eval_every == 0):
                    evaluation = evaluate(cfg, method, valid_features, collate, accelerator)
                    method.on_validation(evaluation)
                    record.update(evaluation)
                    final = record
                if main:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                accelerator.log(record, step=step)
                bar.set_postfix(loss=f"{totals['student']:.4f}", tok_s=f"{tps:.0f}")
            if tc.save_every and step % tc.save_every == 0 and step != tc.max_steps:
                checkpoint()
    except KeyboardInterrupt:
        bar.close()
        checkpoint()
        raise OkdError(f"interrupted at step {state['step']}; checkpoint saved, continue with --resume") from None
    finally:
        bar.close()

    if main:
        metrics_file.close()
    checkpoint()
    save_outputs(out, accelerator, student, teacher if mode == "online" else None, tokenizer)
    summary = {
        "method": cfg.method.name,
        "divergence": cfg.method.resolved_divergence,
        "teacher": mode,
        "steps": state["step"],
        "wall_clock_s": round(state["elapsed_s"], 2),
        "tokens": state["tokens"],
        "tokens_per_s": round(state["tokens"] / max(state["elapsed_s"], 1e-9), 1),
        "generated_tokens": state["generated_tokens"],
        "skipped_steps": state["skipped"],
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "device": str(accelerator.device),
        "num_processes": world,
        "train_examples": len(features),
        "data": data_stats,
        "final_metrics": {k: v for k, v in final.items() if k in ("loss", "loss_online") or k.startswith("valid_")},
    }
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from, so metrics.jsonl has no duplicates."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass  # a line cut by a crash
    path.write_text("".join(line + "\n" for line in keep))


@torch.no_grad()
def evaluate(cfg: Config, method, valid_features: list, collate, accelerator) -> dict:
    """Validation: the student's CE on data.valid responses (comparable across methods)."""
    if not valid_features:
        return {}
    from okd.losses import token_ce

    student = method.models.student
    student.eval()
    total, count = 0.0, 0
    bs = cfg.train.batch_size
    for i in range(accelerator.process_index * bs, len(valid_features), bs * accelerator.num_processes):
        b = {k: v.to(accelerator.device) for k, v in collate(valid_features[i:i + bs]).items()}
        with accelerator.autocast():
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ce = token_ce(logits[:, :-1, :method.models.vocab_size], b["labels"][:, 1:])
        total += float(ce.sum())
        count += int((b["labels"][:, 1:] != -100).sum())
    sums = accelerator.reduce(torch.tensor([total, count], device=accelerator.device, dtype=torch.float64), "sum")
    result = {"valid_loss": float(sums[0] / max(sums[1], 1))}
    if cfg.train.eval_rouge and getattr(method, "valid_examples", None) and accelerator.is_main_process:
        from okd.eval import quick_rouge

        result["valid_rougeL"] = quick_rouge(accelerator.unwrap_model(student), method.models.tokenizer,
                                             method.valid_examples[:cfg.train.eval_rouge_limit], cfg.data.template,
                                             max_new_tokens=cfg.method.max_new_tokens,
                                             max_prompt_length=cfg.data.max_prompt_length)
    student.train()
    return result


def save_outputs(out: Path, accelerator, student, teacher, tokenizer) -> None:
    """student/ (HF directory + tokenizer, safetensors) and online_module/ (peft adapter)."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    s = accelerator.unwrap_model(student)
    s.save_pretrained(out / "student", safe_serialization=True)
    tokenizer.save_pretrained(out / "student")
    if teacher is not None:
        accelerator.unwrap_model(teacher).save_pretrained(out / "online_module", safe_serialization=True)
