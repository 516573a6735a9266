"""Everything a run needs before its first step, returned as one object (torchtune's `setup`).

`setup(cfg, resume)` checks the config, opens the output directory, builds the accelerator and the
distribution strategy, loads the models, the data and the optimizers, and restores a checkpoint when
resuming. The loop (okd/train/trainer.py) then only trains.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from okd.cards import command_line
from okd.config import Config, flatten
from okd.errors import OkdError
from okd.methods.base import scored_index
from okd.precision import resolve_mixed_precision
from okd.train.checkpoint import DamagedCheckpoint, checkpoint_dirs, clean_temporary, load_checkpoint, write_guard
from okd.train.preflight import data_warnings
from okd.train.sharding import check_distributed, head_params, zero3_gathered
from okd.train.state import BatchOrder, RunState, check_resumed_config, prepare_output_dir
from okd.train.strategy import Strategy, strategy_for

log = logging.getLogger("okd.train.trainer")


@dataclasses.dataclass
class Run:
    """One training job, set up: what the loop reads and updates."""

    cfg: Config
    out: Path
    accelerator: Any
    strategy: Strategy
    method: Any  # okd.methods.Method, holding the (wrapped) models
    tokenizer: Any
    optimizers: dict
    schedulers: dict
    features: list
    valid_features: list
    collate: Any
    order: BatchOrder
    state: RunState
    data_stats: dict
    saved_step: int | None = None  # the step of the newest checkpoint on disk
    save_clock: Any = None  # okd.train.checkpoint.SaveClock (train.save_every_minutes)

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def micro_batch(self, position: int) -> dict:
        """This process's share of global micro-batch `position`, on the CPU, with its scored positions
        (`scored_index`, computed here so that nothing on the device has to be read to find them)."""
        bs, rank = self.cfg.train.batch_size, self.accelerator.process_index
        idx = self.order.batch(position)[rank * bs:(rank + 1) * bs]
        batch = self.collate([self.features[i] for i in idx])
        batch["scored_index"] = scored_index(batch["labels"])
        return batch

    def to_device(self, batch: dict) -> dict:
        """Pinned, non-blocking copies on CUDA."""
        device = self.accelerator.device
        if device.type == "cuda":
            return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(device) for k, v in batch.items()}


def make_accelerator(cfg: Config, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Each call is a fresh run: forget an earlier run's precision in this process (okd demo, compare and
    # notebooks train several models in one process; accelerate refuses a changed setting). PartialState,
    # the process group, stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
                              log_with=cfg.train.trackers or None, project_dir=str(out))
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise OkdError(f"launched as {launched} processes, but they did not join one distributed run (each would "
                       "train alone and overwrite the others' output_dir); on a machine without GPUs set "
                       "ACCELERATE_USE_CPU=1 (see docs/scale.md)")
    check_distributed(cfg, accelerator.distributed_type,
                      getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", 1))
    return accelerator


def load_models(cfg: Config, teacher_tokenizer=None):
    """(student, teacher or None, tokenizer, shared vocabulary size, teacher cache or None); the teacher
    carries its online module when the method trains one, and is frozen otherwise; with teacher.cache
    it is not loaded at all. teacher_tokenizer: the teacher's, when the caller has it (method.cross_tokenizer)."""
    from okd.models.loading import check_compatible, check_embeddings, load_model, load_tokenizer
    from okd.models.online import add_online_module
    from okd.models.teacher_cache import open_cache, validate_cache, validate_cross_cache
    from okd.crosstok.data import CROSS_HINT, pair_vocab

    mode = cfg.method.resolved_teacher
    tokenizer = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    teacher, vocab, cache = None, len(tokenizer), None
    if cfg.teacher.cache:
        cache = open_cache(cfg.teacher.cache)
        if cfg.method.cross_tokenizer != "off":  # a cache on the teacher's own tokens
            t_tok = teacher_tokenizer or load_tokenizer(cfg.teacher)
            validate_cross_cache(cache, cfg, t_tok, tokenizer, pair_vocab(t_tok, tokenizer).teacher)
        else:
            validate_cache(cache, cfg, tokenizer, vocab_size=vocab)
    elif mode != "none":
        teacher = load_model(cfg.teacher)
        t_tok = teacher_tokenizer or load_tokenizer(cfg.teacher)
        # (with DeepSpeed's zero3_init_flag the models arrive partitioned: gather the heads to count their rows)
        with zero3_gathered(head_params(teacher) + head_params(student)):
            if cfg.method.cross_tokenizer == "off":
                vocab = check_compatible(t_tok, tokenizer, teacher, student, CROSS_HINT)
            else:  # each model against its own tokenizer
                check_compatible(t_tok, t_tok, teacher, teacher)
                vocab = check_compatible(tokenizer, tokenizer, student, student)
            check_embeddings(teacher, t_tok, "teacher")
        teacher = add_online_module(teacher, cfg.online) if mode == "online" else teacher.requires_grad_(False)
    with zero3_gathered(head_params(student)):
        check_embeddings(student, tokenizer, "student")  # every method, sft included
    student.train()
    return student, teacher, tokenizer, vocab, cache


def load_split(cfg: Config, source: str, split: str, tokenizer, limit: int | None, progress: bool,
               teacher_tokenizer=None):
    """(examples, features, stats); with a teacher_tokenizer (method.cross_tokenizer) each feature holds the
    teacher's encoding and the alignment too (okd.crosstok.data)."""
    from okd.crosstok.data import encode_pairs, teacher_template
    from okd.data import encode_examples, load_examples_with_stats

    examples, read_stats = load_examples_with_stats(source, split=split, skip_invalid=cfg.data.skip_invalid,
                                                    limit=limit)
    where = f"data.{split} {source!r}"
    if teacher_tokenizer is None:
        features, stats = encode_examples(examples, tokenizer, cfg.data.template, cfg.data.max_length,
                                          progress=progress, source=where)
    else:
        features, stats = encode_pairs(examples, tokenizer, teacher_tokenizer, cfg.data.template,
                                       teacher_template(cfg, teacher_tokenizer), cfg.data.max_length, source=where)
    stats.update({f"records_{k}": v for k, v in read_stats.items() if k != "n"})
    return examples, features, stats


def load_data(cfg: Config, tokenizer, progress: bool, teacher_tokenizer=None):
    """(train features, their stats, valid examples, valid features); validation scores the student only."""
    _, features, stats = load_split(cfg, cfg.data.train, "train", tokenizer, cfg.data.train_limit, progress,
                                    teacher_tokenizer)
    for i, f in enumerate(features):
        f["example_index"] = i  # the row of a teacher cache built on the same data
    valid_examples, valid_features = [], []
    if cfg.data.valid:
        valid_examples, valid_features, _ = load_split(cfg, cfg.data.valid, "valid", tokenizer,
                                                       cfg.data.valid_limit, False)
    if stats.get("truncated_response", 0) >= len(features):
        # nothing would be learnt as written (every answer loses its end and its EOS): a wrong setting
        raise OkdError(f"every training example is longer than data.max_length={cfg.data.max_length} even after "
                       f"cutting its prompt: all {len(features)} responses would be cut short; raise data.max_length")
    if stats.get("truncated_prompt") or stats.get("truncated_response"):
        log.warning("data.max_length=%d: %d prompts cut from the left, %d responses cut", cfg.data.max_length,
                    stats.get("truncated_prompt", 0), stats.get("truncated_response", 0))
    return features, stats, valid_examples, valid_features


def make_optimizers(cfg: Config, student, teacher, fused: bool) -> dict:
    """The student's AdamW, and the online module's when the teacher is online; `fused` (CUDA without
    sharding): one kernel per step instead of a few per parameter group."""
    def adamw(params, lr, wd):
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=wd, fused=fused or None)

    optimizers = {"student": adamw(student.parameters(), cfg.train.lr, cfg.train.weight_decay)}
    if cfg.method.resolved_teacher == "online":
        optimizers["online"] = adamw(teacher.parameters(), cfg.online.lr, cfg.online.weight_decay)
    return optimizers


def compile_models(cfg: Config, accelerator, *models) -> str:
    """train.compile: torch.compile each model's forward in place (nn.Module.compile; the wrappers, the
    state-dict names and the saved files stay as they are). Returns the mode used ("off" for none)."""
    mode = cfg.train.compile
    if mode == "auto":
        mode = "reduce-overhead" if accelerator.device.type == "cuda" else "off"
    if mode == "off":
        return mode
    for m in models:
        if m is not None:
            m.compile(mode=None if mode == "default" else mode, dynamic=None)
    return mode


def make_schedule(cfg: Config, key: str, optimizer):
    """Linear warm-up (train.warmup_steps) and decay to 0 at train.max_steps; the online module's may be
    constant (online.lr_schedule), and the student's starts after online.warmup_steps."""
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    if key == "online" and cfg.online.lr_schedule == "constant":
        return get_constant_schedule(optimizer)
    held = cfg.online.warmup_steps if key == "student" and cfg.method.resolved_teacher == "online" else 0
    return get_linear_schedule_with_warmup(optimizer, cfg.train.warmup_steps, max(cfg.train.max_steps - held, 1))


def data_sha256(features: list[dict]) -> str:
    """What the run trains on, as encoded (examples, order, tokens, labels): a resume checks it is unchanged."""
    import hashlib

    from okd.models.fingerprints import feature_digests

    return hashlib.sha256(feature_digests(features).tobytes()).hexdigest()


def _load_newest_intact(run: Run, checkpoints: list[Path]) -> tuple[dict, dict, Path]:
    """Load the newest checkpoint that is intact; a damaged one is named in a warning and the one before it
    taken (every process sees the same files and takes the same decision)."""
    student, online = run.strategy.unwrapped()
    for i in range(len(checkpoints) - 1, -1, -1):
        try:
            state, method_state = load_checkpoint(checkpoints[i], student=student, online=online,
                                                  optimizers=run.optimizers, schedulers=run.schedulers,
                                                  rank=run.accelerator.process_index, **run.strategy.load_args())
            return state, method_state, checkpoints[i]
        except DamagedCheckpoint as e:
            if i == 0:
                raise OkdError(f"{e}, and no intact checkpoint precedes it; delete it to start the run over with "
                               "--resume, or start a new output_dir") from None
            log.warning("%s; resuming from the checkpoint before it, %s", e, checkpoints[i - 1].name)
    raise AssertionError("unreachable")


def restore(run: Run, resume: bool) -> None:
    """Continue from the newest checkpoint when resuming (models, optimizers, schedulers, RNG, counters)."""
    acc, root = run.accelerator, run.ckpt_root
    if acc.is_main_process:
        clean_temporary(root)  # what a kill in the middle of a save left behind
    acc.wait_for_everyone()
    if resume and checkpoint_dirs(root):
        state, method_state, last = _load_newest_intact(run, checkpoint_dirs(root))
        run.method.load_state_dict(method_state)
        data_sha256, run.state = run.state.data_sha256, RunState.from_dict(state)
        run.state.data_sha256 = data_sha256
        log.info("resumed from %s (step %d)", last, run.state.step)
        if state.get("num_processes", acc.num_processes) != acc.num_processes:
            log.warning("resumed with %d processes, the run had %d: the data order and random streams differ from "
                        "an uninterrupted run", acc.num_processes, state["num_processes"])
        if state.get("data_sha256") not in (None, data_sha256):
            log.warning("the training data differ from those the checkpoint was trained on (data.train, its filters "
                        "or data.max_length changed): the resumed run sees other examples than an uninterrupted one")
    elif resume:
        log.info("no checkpoint in %s; starting from scratch", root)
    run.state.num_processes = acc.num_processes


def setup(cfg: Config, *, resume: bool, progress: bool) -> Run:
    from accelerate.utils import set_seed
    from okd.crosstok.data import CrossCollator, teacher_side
    from okd.data import Collator
    from okd.methods import Models, build_method
    from okd.models.loading import load_tokenizer

    out = prepare_output_dir(cfg, resume)
    accelerator = make_accelerator(cfg, out)
    strategy = strategy_for(accelerator, cfg)
    strategy.configure()
    set_seed(cfg.train.seed)
    if resume:
        check_resumed_config(out, cfg)
    accelerator.wait_for_everyone()  # every rank has read the old config.yaml before it is replaced
    if accelerator.is_main_process:
        with write_guard("the run's config", out / "config.yaml"):
            (out / "config.yaml").write_text(cfg.to_yaml())

    t_tok = load_tokenizer(cfg.teacher) if cfg.method.cross_tokenizer != "off" else None
    student, teacher, tokenizer, vocab, cache = load_models(cfg, t_tok)
    progress = progress and accelerator.is_main_process
    features, stats, valid_examples, valid_features = load_data(cfg, tokenizer, progress, t_tok)
    if cache is not None:  # the cache was built on these examples, in this order (a cross-tokenizer one: the
        cache.check_features("train", teacher_side(features) if t_tok is not None else features)  # teacher's)
    for warning in data_warnings(cfg, len(features), accelerator.num_processes):
        log.warning(warning)
    if len(features) < accelerator.num_processes:
        raise OkdError(f"{len(features)} training example(s) for {accelerator.num_processes} processes: every "
                       "process needs at least one; launch fewer processes or give more data")
    student, teacher, optimizers = strategy.prepare(student, teacher, make_optimizers(
        cfg, student, teacher, fused=accelerator.device.type == "cuda" and type(strategy) is Strategy))
    schedulers = strategy.schedulers(lambda key, o: make_schedule(cfg, key, o))
    compile_models(cfg, accelerator, student, teacher)
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tokenizer, vocab_size=vocab,
                                     gathered=strategy.gathered, teacher_cache=cache))
    method.valid_examples = valid_examples
    pad = cfg.data.pad_to_multiple_of or (64 if accelerator.device.type == "cuda" else 1)
    collate = Collator(tokenizer.pad_token_id, pad_to_multiple_of=pad)
    if t_tok is not None:  # the teacher's batch and the alignment's groups next to the student's
        method.attach_teacher_tokenizer(t_tok)
        collate = CrossCollator(collate, t_tok.pad_token_id if t_tok.pad_token_id is not None else t_tok.eos_token_id)
    order = BatchOrder([len(f["input_ids"]) for f in features], cfg.train.batch_size * accelerator.num_processes,
                       cfg.train.seed, cfg.data.group_by_length)
    run = Run(cfg=cfg, out=out, accelerator=accelerator, strategy=strategy, method=method, tokenizer=tokenizer,
              optimizers=optimizers, schedulers=schedulers, features=features, valid_features=valid_features,
              collate=collate, order=order,
              state=RunState(data_sha256=data_sha256(features)), data_stats=stats)
    restore(run, resume)
    run.state.commands.append(command_line())  # after the resumed run's own (the model card lists them all)
    if cfg.train.trackers:
        # flat scalars: TensorBoard's hparams take nothing else
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                   for k, v in flatten(cfg.model_dump(mode="json")).items()}
        accelerator.init_trackers("okd", config=hparams)
    return run
