"""The one training loop, on Hugging Face Accelerate, shared by every method.

Per optimizer step: take `grad_accum` micro-batches (each process its own shard), let the method
prepare them (on-policy methods sample here), normalise every loss by the number of scored tokens
in the whole step across all processes (so accumulation and data parallelism give the same gradient
as one big batch), backward once per micro-batch, clip, then step the online module's optimizer and
then the student's (OKD Algorithm 1 order). The data order is a pure function of (seed, epoch), so
a resumed run needs only the position.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import signal
import threading
import time
from pathlib import Path

import torch

from okd.config import Config
from okd.errors import OkdError
from okd.train.checkpoint import checkpoint_dirs, clean_temporary, fsdp_gather, load_checkpoint, save_checkpoint
from okd.train.sharding import (
    ZeroHeadGather,
    check_distributed,
    configure_deepspeed,
    deepspeed_frozen_engine,
    full_state_dict,
    head_modules,
    head_params,
    save_fsdp_adapter,
    unsharded_head_params,
    zero3_gathered,
    zero3_grad_norm,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- set-up helpers

def prepare_output_dir(cfg: Config, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    has_run = (out / "checkpoints").is_dir() and checkpoint_dirs(out / "checkpoints") or (out / "summary.json").is_file()
    if has_run and not resume:
        raise OkdError(f"output_dir {str(out)!r} already holds a run; pass --resume to continue it or choose "
                       "another output_dir (okd never overwrites a run)")
    if out.exists() and not out.is_dir():
        raise OkdError(f"output_dir {str(out)!r} is a file, not a directory; choose another output_dir")
    if resume and (out / "summary.json").is_file():
        done = checkpoint_dirs(out / "checkpoints")
        step = json.loads((done[-1] / "state.json").read_text()).get("step", 0) if done else 0
        if step >= cfg.train.max_steps:
            raise OkdError(f"the run in {str(out)!r} is finished (step {step}, train.max_steps={cfg.train.max_steps}); "
                           "nothing to resume. Raise train.max_steps to train further, or choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: launched processes probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OkdError(f"output_dir {str(out)!r} is not writable ({e.strerror}); choose another output_dir") from None
    return out


# Keys whose change makes a checkpoint meaningless for the new config (other models, another
# online module or method): resuming with them changed is an error; any other change is a warning.
RESUME_FIXED = ("student.path", "student.gguf_file", "student.revision", "teacher.path", "teacher.gguf_file",
                "teacher.revision", "method.name", "method.teacher", "online.rank", "online.layers",
                "online.target_modules")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumed_config(out: Path, cfg: Config) -> list[str]:
    """Compare the config of the run in `out` with `cfg`; error on RESUME_FIXED keys, warn on others.

    Returns the changed keys. `output_dir` is not compared (the same directory may be spelled
    differently); `method.teacher` is compared as resolved (unset means the method's default).
    """
    import yaml
    from pydantic import ValidationError

    path = out / "config.yaml"
    if not path.is_file() or not checkpoint_dirs(out / "checkpoints"):
        return []  # nothing to continue: the run starts over with this config
    try:
        old = Config.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError, TypeError):
        log.warning("could not read %s to compare it with this config; resuming anyway", path)
        return []
    before, after = _flat(old.model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    before["method.teacher"], after["method.teacher"] = old.method.resolved_teacher, cfg.method.resolved_teacher
    changed = [k for k in after if k != "output_dir" and before.get(k) != after[k]]
    fixed = [k for k in changed if k in RESUME_FIXED]
    if fixed:
        raise OkdError("cannot resume with a changed " + ", ".join(f"{k} ({before.get(k)!r} -> {after[k]!r})" for k in fixed)
                       + f": the checkpoints in {str(out)!r} belong to the old setting; resume with the original "
                       "config or choose another output_dir")
    if changed:
        log.warning("resuming with a changed config: %s; the result will differ from an uninterrupted run",
                    ", ".join(f"{k} ({before.get(k)!r} -> {after[k]!r})" for k in changed))
    return changed


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
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedType, set_seed
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
    # Each call is a fresh run: forget an earlier run's precision in this process (okd demo, compare
    # and notebooks train several models in one process; accelerate refuses a changed setting).
    # PartialState, the process group, stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), log_with=tc.trackers or None,
                              project_dir=str(out))
    main = accelerator.is_main_process
    progress = progress and main
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise OkdError(f"launched as {launched} processes, but they did not join one distributed run (each would "
                       "train alone and overwrite the others' output_dir); on a machine without GPUs set "
                       "ACCELERATE_USE_CPU=1 (see docs/scale.md)")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    check_distributed(cfg, accelerator.distributed_type,
                      getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", 1))
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:
        configure_deepspeed(cfg, accelerator)
    set_seed(tc.seed)
    if resume:
        check_resumed_config(out, cfg)
    accelerator.wait_for_everyone()  # every rank has read the old config.yaml before it is replaced
    if main:
        (out / "config.yaml").write_text(cfg.to_yaml())

    # models
    tokenizer = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    teacher, vocab = None, len(tokenizer)
    if mode != "none":
        teacher = load_model(cfg.teacher)
        # (with DeepSpeed's zero3_init_flag the models arrive partitioned: gather the heads to count their rows)
        with zero3_gathered(head_params(teacher) + head_params(student)):
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
    if data_stats.get("truncated_response", 0) >= len(features):
        # nothing would be learnt as written (every answer loses its end and its EOS): a wrong setting
        raise OkdError(f"every training example is longer than data.max_length={cfg.data.max_length} even after "
                       f"cutting its prompt: all {len(features)} responses would be cut short; raise data.max_length")
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
    def schedule(o):
        return get_linear_schedule_with_warmup(o, tc.warmup_steps, tc.max_steps)

    schedulers = {} if deepspeed else {k: schedule(o) for k, o in optimizers.items()}  # DeepSpeed: below

    fsdp = accelerator.distributed_type == DistributedType.FSDP
    unsharded = unsharded_head_params(student) if fsdp else []  # their gradients are averaged by okd
    if fsdp:  # FSDP leaves the output layer whole: the chunked losses read it after the forward
        accelerator.state.fsdp_plugin.ignored_modules = head_modules(student)
    student, optimizers["student"] = accelerator.prepare(student, optimizers["student"])
    if fsdp and teacher is not None:
        accelerator.state.fsdp_plugin.ignored_modules = head_modules(teacher)
    if mode == "online":
        # under DeepSpeed a second engine, from the same config; okd drives both engines itself (below), so
        # accelerate's single "engine for accelerator.backward" slot stays the student's
        wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
        if deepspeed:
            accelerator.deepspeed_engine_wrapped = None  # (else accelerate warns that the slot is taken)
        teacher, optimizers["online"] = accelerator.prepare(teacher, optimizers["online"])
        if deepspeed:
            accelerator.deepspeed_engine_wrapped = wrapped
    elif teacher is not None and deepspeed:
        teacher = deepspeed_frozen_engine(teacher, accelerator)
    elif teacher is not None:
        # the frozen teacher: placed on the device (DDP: no wrapper, it has nothing to train), sharded
        # like the student under FSDP
        teacher = accelerator.prepare_model(teacher) if sharded else teacher.to(accelerator.device)
    if teacher is not None:
        teacher.eval()  # no dropout in the teacher; LoRA dropout (online.dropout) is not applied
    # DeepSpeed: the engines okd steps itself (the online module's first), and the output layers kept
    # gathered from each forward until the losses are computed
    engines = {k: m for k, m in (("online", teacher if mode == "online" else None), ("student", student))
               if m is not None} if deepspeed else {}
    heads = ZeroHeadGather([m for m in (student, teacher) if m is not None]) if deepspeed else None
    if deepspeed:  # on the optimizer each engine steps (DeepSpeedCPUAdam when the optimizer is offloaded)
        schedulers = {k: schedule(engines[k].optimizer.optimizer) for k in ("student", "online") if k in engines}
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tokenizer, vocab_size=vocab))
    method.valid_examples = valid_examples

    # resume
    # elapsed_s: wall clock of the loop; overhead_s: its validations and checkpoint saves; train_s: the rest,
    # taken at each step's end (not elapsed − overhead later: the last validation adds to overhead only)
    state = {"step": 0, "position": 0, "tokens": 0, "generated_tokens": 0, "elapsed_s": 0.0, "overhead_s": 0.0,
             "train_s": 0.0, "skipped": 0}
    ckpt_root = out / "checkpoints"
    unwrap = accelerator.unwrap_model
    if main:
        clean_temporary(ckpt_root)  # what a kill in the middle of a save left behind
    accelerator.wait_for_everyone()
    if resume and checkpoint_dirs(ckpt_root):
        last = checkpoint_dirs(ckpt_root)[-1]
        state, method_state = load_checkpoint(last, student=unwrap(student),
                                              online=unwrap(teacher) if mode == "online" else None,
                                              optimizers=optimizers, schedulers=schedulers,
                                              rank=accelerator.process_index,
                                              fsdp={"student": student, "online": teacher if mode == "online" else None}
                                              if fsdp else None, engines=engines if deepspeed else None)
        method.load_state_dict(method_state)
        log.info("resumed from %s (step %d)", last, state["step"])
        if state.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
            log.warning("resumed with %d processes, the run had %d: the data order and random streams differ from "
                        "an uninterrupted run", accelerator.num_processes, state["num_processes"])
    elif resume:
        log.info("no checkpoint in %s; starting from scratch", ckpt_root)
    state["num_processes"] = accelerator.num_processes
    for key in ("overhead_s", "train_s"):  # checkpoints written before these existed
        state.setdefault(key, 0.0)
    if main:  # drop records logged after the checkpoint (or by a run killed before its first one)
        _truncate_metrics(out / "metrics.jsonl", state["step"])
    saved_step = state["step"] if state["step"] else None  # the step of the newest checkpoint on disk

    if method.validate_at_start and valid_features and state["step"] == 0:
        method.on_validation(evaluate(cfg, method, valid_features, collate, accelerator))  # e.g. distillm's reference loss

    world, rank = accelerator.num_processes, accelerator.process_index
    if len(features) < world:
        raise OkdError(f"{len(features)} training example(s) for {world} processes: every process needs at least one; "
                       "launch fewer processes or give more data")
    order = BatchOrder([len(f["input_ids"]) for f in features], tc.batch_size * world, tc.seed,
                       cfg.data.group_by_length)
    if tc.trackers:
        accelerator.init_trackers("okd", config=json.loads(json.dumps(cfg.model_dump(mode="json"))))

    def micro_batch(position: int) -> dict:
        idx = order.batch(position)[rank * tc.batch_size:(rank + 1) * tc.batch_size]
        batch = collate([features[i] for i in idx])
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    def checkpoint():
        nonlocal saved_step
        if saved_step == state["step"]:
            return  # already on disk (e.g. Ctrl-C right after a periodic save)
        online = teacher if mode == "online" else None
        # FSDP: the full states, gathered on the main process (every process takes part), in the usual files
        gathered = fsdp_gather(accelerator, student, online, optimizers) if fsdp else None
        save_checkpoint(ckpt_root, state["step"], accelerator=accelerator, student=unwrap(student),
                        online=unwrap(online) if online is not None else None, optimizers=optimizers,
                        schedulers=schedulers, method_state=method.state_dict(), state=state,
                        keep=tc.keep_checkpoints, gathered=gathered, engines=engines if deepspeed else None)
        saved_step = state["step"]

    metrics_file = open(out / "metrics.jsonl", "a") if main else None
    bar = tqdm(total=tc.max_steps, initial=state["step"], desc=f"okd train [{cfg.method.name}]",
               disable=not progress, dynamic_ncols=True)
    start = time.perf_counter() - state["elapsed_s"]
    window_t, window_tokens = time.perf_counter(), 0

    @contextlib.contextmanager
    def not_training():
        """Validation and checkpoint saves inside the loop: excluded from train_s and tokens/s."""
        nonlocal window_t
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            state["overhead_s"] += dt
            window_t += dt

    final: dict = {}
    interrupt = GracefulInterrupt()
    bad_in_a_row = 0
    try:
        interrupt.install()
        while state["step"] < tc.max_steps:
            step = state["step"]
            batches = [method.prepare(micro_batch(state["position"] + i), step) for i in range(tc.grad_accum)]
            # normalise by the scored tokens of the whole step on all processes; DDP averages the
            # gradients over processes, hence the factor `world` folded into the norm
            # (one all-reduce also sums the step's tokens and generated tokens over the processes)
            counts = torch.tensor([sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
                                   sum(int(b["attention_mask"].sum()) for b in batches),
                                   method.metrics.pop("generated_tokens", 0)],
                                  device=accelerator.device, dtype=torch.float64)
            scored, tokens, generated = (int(x) for x in accelerator.reduce(counts, "sum").tolist())
            norm = max(scored, 1) / world
            totals: dict[str, float] = {}
            ddp_models = [m for m in (student, teacher if mode == "online" else None) if m is not None]
            for i, b in enumerate(batches):
                if deepspeed:
                    # ZeRO-3 reduce-scatters every micro-batch's gradients (nothing to defer); one backward of
                    # the sum through the student's engine: the two losses' graphs share nothing (the chunked
                    # loss routes each gradient to its own model), and the online module's engine reduces its
                    # gradients through its own hooks in the same backward
                    with heads.scope(), accelerator.autocast():
                        losses = method.losses(b, norm)
                    engines["student"].backward(sum(losses.values()))
                else:
                    with contextlib.ExitStack() as no_sync:
                        if i < len(batches) - 1:  # all-reduce the gradients once per step, not per micro-batch
                            for m in ddp_models:
                                no_sync.enter_context(accelerator.no_sync(m))
                        with accelerator.autocast():
                            losses = method.losses(b, norm)
                        accelerator.backward(sum(losses.values()))
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + v.detach().float().item()
            state["position"] += tc.grad_accum
            for p in unsharded:  # FSDP does not average what it does not shard (DDP semantics: mean)
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, "mean")
            grad_norms = {}
            if deepspeed:  # DeepSpeed clips inside its step, by this same norm (gradient_clipping)
                grad_norms = {key: zero3_grad_norm(engines[key], accelerator) for key in engines}
            elif tc.max_grad_norm > 0:  # clip both before stepping either, so a bad step changes nothing
                for key in optimizers:
                    # all parameters (frozen ones have no grad): accelerate then recognises an FSDP model
                    # and clips by the norm over all shards
                    params = list((teacher if key == "online" else student).parameters())
                    grad_norms[key] = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
            values = {**{f"loss_{k}": v for k, v in totals.items()}, **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
            what = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            if world > 1:  # every process takes the same decision
                flag = accelerator.reduce(torch.tensor(float(bool(what)), device=accelerator.device), "sum")
                what = what or ("loss on another process" if flag.item() else "")
            if what:
                for o in optimizers.values():
                    o.zero_grad(set_to_none=True)
                for e in engines.values():  # DeepSpeed's accumulated partitions (the wrapper's zero_grad is a no-op)
                    e.optimizer.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                if tc.on_nan == "skip" and bad_in_a_row < MAX_BAD_IN_A_ROW:
                    state["skipped"] += 1
                    log.warning("non-finite %s at step %d: batch skipped (%d so far)", what, step + 1, state["skipped"])
                    continue
                kept = checkpoint_dirs(ckpt_root)
                raise OkdError(f"non-finite {what} at step {step + 1}"
                               + (f" ({bad_in_a_row} batches in a row)" if bad_in_a_row > 1 else "")
                               + "; training stopped, "
                               + (f"last good checkpoint kept at {kept[-1]}" if kept else "no checkpoint was saved")
                               + " (lower train.lr, check the data, or set train.on_nan=skip)")
            bad_in_a_row = 0
            for key in ("online", "student"):  # module first, then the student (Algorithm 1)
                if key not in optimizers:
                    continue
                if deepspeed:
                    engines[key].step()  # clips, steps okd's AdamW on the partitions, zeroes the gradients
                else:
                    optimizers[key].step()
                    optimizers[key].zero_grad(set_to_none=True)
                schedulers[key].step()
            state["tokens"] += tokens
            state["generated_tokens"] += generated
            state["step"] = step = step + 1
            state["elapsed_s"] = time.perf_counter() - start
            state["train_s"] = state["elapsed_s"] - state["overhead_s"]
            window_tokens += tokens
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.max_steps:
                if world > 1:  # each process holds its share (normalised by the global count): the mean
                    keys = sorted(totals)  # over processes is the loss of the whole global batch
                    means = accelerator.reduce(torch.tensor([totals[k] for k in keys], device=accelerator.device,
                                                            dtype=torch.float64), "mean")
                    totals = dict(zip(keys, means.tolist()))
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                record = {"step": step, "loss": totals["student"], "lr": schedulers["student"].get_last_lr()[0],
                          "elapsed_s": round(state["elapsed_s"], 3), "train_s": round(state["train_s"], 3),
                          "tokens": state["tokens"],
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
                    with not_training():
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
                with not_training():
                    checkpoint()
            if interrupt.requested(accelerator) and step < tc.max_steps:
                checkpoint()
                raise TrainingInterrupted(f"interrupted at step {step} of {tc.max_steps}; checkpoint saved in "
                                          f"{ckpt_root / f'step-{step:07d}'}; continue with the same command "
                                          "and --resume")
    except KeyboardInterrupt:  # a second Ctrl-C, in the middle of a step: nothing consistent to save
        kept = checkpoint_dirs(ckpt_root)
        raise TrainingInterrupted(f"interrupted twice at step {state['step']}, without saving; "
                                  + (f"the last checkpoint is {kept[-1]} (continue with --resume)" if kept
                                     else "no checkpoint was saved")) from None
    finally:
        interrupt.uninstall()
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
        "wall_clock_s": round(state["elapsed_s"], 2),  # the loop, with its validations and checkpoint saves
        "train_s": round(state["train_s"], 2),  # without them
        "tokens": state["tokens"],
        "tokens_per_s": round(state["tokens"] / max(state["train_s"], 1e-9), 1),
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
    # every process leaves together: one that tears its process group down while another still writes
    # was seen to abort at exit (gloo, under DeepSpeed, CPU)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


MAX_BAD_IN_A_ROW = 20  # train.on_nan=skip gives up after this many non-finite batches in a row


class TrainingInterrupted(OkdError):
    """Ctrl-C: the run stopped at a step boundary (checkpoint saved) or, on a second Ctrl-C, at once."""

    exit_code = 130


class GracefulInterrupt:
    """A first SIGINT only sets a flag, which the loop checks between steps (then saves and stops);
    a second one raises KeyboardInterrupt at once. Only installed from the main thread."""

    def __init__(self):
        self.flag, self.previous = False, None

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        log.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def requested(self, accelerator) -> bool:
        """Whether any process was interrupted (all processes agree, so they stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.flag
        flag = torch.tensor(float(self.flag), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item())


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
    bs, world = cfg.train.batch_size, accelerator.num_processes
    # every process runs the same number of forwards (a wrapped model's forward may communicate);
    # a process past the end repeats the first batch and does not count it
    for j in range(math.ceil(len(valid_features) / (bs * world))):
        i = (j * world + accelerator.process_index) * bs
        chunk = valid_features[i:i + bs]
        b = {k: v.to(accelerator.device) for k, v in collate(chunk or valid_features[:bs]).items()}
        with accelerator.autocast():
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        if not chunk:
            continue
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
    """student/ (HF directory + tokenizer, safetensors) and online_module/ (peft adapter).

    Under FSDP/DeepSpeed the parameters are sharded: the full state dicts are gathered first (every
    process takes part) and the main process writes them.
    """
    from accelerate.utils import DistributedType

    accelerator.wait_for_everyone()
    gathered = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    s_state = full_state_dict(accelerator, student) if gathered else None
    t_state = full_state_dict(accelerator, teacher) if gathered and teacher is not None else None
    if not accelerator.is_main_process:
        return
    s = accelerator.unwrap_model(student)
    s.save_pretrained(out / "student", safe_serialization=True, state_dict=s_state)
    tokenizer.save_pretrained(out / "student")
    if teacher is not None:
        online = accelerator.unwrap_model(teacher)
        if accelerator.distributed_type == DistributedType.FSDP:
            save_fsdp_adapter(out / "online_module", online, t_state)
        else:
            online.save_pretrained(out / "online_module", safe_serialization=True, state_dict=t_state)
