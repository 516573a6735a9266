"""The one training loop, shared by every method.

Per optimizer step: take `grad_accum` micro-batches (each process its own shard), let the method
prepare them (on-policy methods sample here), normalise every loss by the number of scored tokens
in the whole step across all processes (so accumulation and data parallelism give the same gradient
as one big batch), backward once per micro-batch, clip, check that everything is finite, then step
the online module's optimizer and then the student's (OKD Algorithm 1 order). The data order is a
pure function of (seed, epoch), so a resumed run needs only the position.

Set-up is okd/train/setup.py, the distribution strategies okd/train/strategy.py, the bookkeeping
okd/train/state.py; this file is the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import signal
import time
from pathlib import Path

import torch

from okd.cards import write_cards
from okd.config import GENERATING_METHODS, Config
from okd.errors import OkdError
from okd.paths import fix_permissions
from okd.progress import progress_bar
from okd.train.best import BestWeights
from okd.train.checkpoint import SaveClock, checkpoint_dirs, save_checkpoint, write_guard
from okd.train.interrupt import GracefulInterrupt, TrainingInterrupted
from okd.train.lock import run_lock
from okd.train.preflight import preflight
from okd.train.setup import Run, setup
from okd.train.state import MetricsLog, RunFinished
from okd.train.validation import evaluate

log = logging.getLogger(__name__)

MAX_BAD_IN_A_ROW = 20  # train.on_nan=skip gives up after this many non-finite batches in a row


def train(cfg: Config, *, resume: bool = False, progress: bool = True) -> Path:
    """Run one training job; returns the output directory (see DESIGN.md §4 for its layout)."""
    for warning in preflight(cfg):  # everything that would fail later, before any model loads
        log.warning(warning)
    with run_lock(cfg.output_dir, enabled=os.environ.get("RANK", "0") == "0"):  # one run per output_dir
        try:
            run = setup(cfg, resume=resume, progress=progress)
        except RunFinished as done:  # --resume of a run that had just finished: say so, and succeed
            log.warning("%s", done)
            return Path(cfg.output_dir)
        return loop(run, progress)


def loop(run: Run, progress: bool) -> Path:
    """The loop: steps, logging and validation, checkpoints; then the final save and summary.json."""
    cfg = run.cfg
    tc, state, method, acc = cfg.train, run.state, run.method, run.accelerator
    if method.validate_at_start and run.valid_features and state.step == 0:
        method.on_validation(evaluate(run))  # e.g. distillm's reference loss
    run.saved_step = state.step or None  # the step of the newest checkpoint on disk
    metrics = MetricsLog(run.out / "metrics.jsonl", state.step, acc.is_main_process)
    bar = progress_bar(total=tc.max_steps, initial=state.step, desc=f"okd train [{cfg.method.name}]",
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    clock, save_clock = Clock(state), SaveClock(tc.save_every_minutes)
    run.save_clock = save_clock
    held = cfg.online.warmup_steps if "online" in run.optimizers else 0
    best = BestWeights(run.out, tc.select_by, state.step)  # train.select_by
    final: dict = {}
    bad_in_a_row = 0
    try:
        with GracefulInterrupt() as interrupt:
            while state.step < tc.max_steps:
                totals, grad_norms, tokens, generated = train_step(run)
                bad = non_finite(run, totals, grad_norms)
                if bad:
                    bad_in_a_row += 1
                    stop_or_skip(run, bad, bad_in_a_row)
                    continue
                bad_in_a_row = 0
                for key in ("online", "student"):  # module first, then the student (Algorithm 1)
                    if key not in run.optimizers:
                        continue
                    if key == "student" and state.step < held:  # online.warmup_steps: the module adapts first
                        run.strategy.hold(key)
                        continue
                    run.strategy.step(key)
                    run.schedulers[key].step()
                state.step += 1
                state.generated_tokens += generated
                clock.step_done(tokens)
                bar.update(1)

                step = state.step
                if step % tc.log_every == 0 or step == tc.max_steps:
                    record = log_record(run, totals, grad_norms, clock.window_rate())
                    if step == tc.max_steps or (tc.eval_every and step % tc.eval_every == 0):
                        with clock.not_training():
                            evaluation = evaluate(run)
                            best.offer(run, evaluation)
                        method.on_validation(evaluation)
                        record.update(evaluation)
                        final = record
                    metrics.write(record)
                    acc.log(record, step=step)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                periodic = tc.save_every and step % tc.save_every == 0
                if step != tc.max_steps and (periodic or save_clock.due(acc)):  # due: train.save_every_minutes
                    with clock.not_training():
                        checkpoint(run)
                if interrupt.requested(acc) and step < tc.max_steps:
                    checkpoint(run)
                    raise TrainingInterrupted(f"{interrupt.what} at step {step} of {tc.max_steps}; checkpoint saved in "
                                              f"{run.ckpt_root / f'step-{step:07d}'}; continue with the same "
                                              "command and --resume", signum=interrupt.signum or signal.SIGINT)
    except KeyboardInterrupt:  # a second signal, in the middle of a step: nothing consistent to save
        kept = checkpoint_dirs(run.ckpt_root)
        raise TrainingInterrupted(f"interrupted twice at step {state.step}, without saving; "
                                  + (f"the last checkpoint is {kept[-1]} (continue with --resume)" if kept
                                     else "no checkpoint was saved")) from None
    finally:
        bar.close()
        metrics.close()

    checkpoint(run)
    with write_guard("the trained student", run.out / "student"):
        run.strategy.save_outputs(run.out, run.tokenizer)
    if acc.is_main_process:
        selected = best.finish(run.out)  # student/ holds the best validation's weights
        result = {**summary(run, final), **({"selected": selected} if selected else {}),
                  "command": run.state.commands[-1], "commands": run.state.commands}
        with write_guard("summary.json", run.out):
            (run.out / "summary.json").write_text(json.dumps(result, indent=1))
            write_cards(run.out, cfg, result)  # student/README.md, online_module/README.md
        for sub in ("student", "online_module"):
            fix_permissions(run.out / sub)
    # every process leaves together: one that tears its process group down while another still writes
    # was seen to abort at exit (gloo, under DeepSpeed, CPU)
    acc.wait_for_everyone()
    acc.end_training()
    return run.out


def train_step(run: Run) -> tuple[dict, dict, int, int]:
    """Forward, losses and backward of one optimizer step's micro-batches, then clipping.

    Returns the step's losses and gradient norms (device tensors, read only when logged or checked)
    and its token counts (seen, generated). The loss normaliser and the counts come from the CPU-side batches, so
    nothing here waits for the device (except what an on-policy method's sampling needs).
    """
    cfg, state, acc = run.cfg, run.state, run.accelerator
    grad_accum = cfg.train.grad_accum
    cpu = [run.micro_batch(state.position + i) for i in range(grad_accum)]
    batches = [run.method.prepare(run.to_device(b), state.step) for b in cpu]
    state.position += grad_accum
    # normalise by the scored tokens of the whole step on all processes; DDP averages the gradients
    # over processes, hence the factor `world` folded into the norm
    seen = [token_counts(b, c) for b, c in zip(batches, cpu)]
    counts = [sum(n for n, _ in seen), sum(t for _, t in seen), run.method.metrics.pop("generated_tokens", 0)]
    if run.world > 1:  # one all-reduce sums the step's scored, seen and generated tokens over the processes
        counts = [int(x) for x in acc.reduce(torch.tensor(counts, device=acc.device, dtype=torch.float64),
                                             "sum").tolist()]
    scored, tokens, generated = counts
    norm = max(scored, 1) / run.world
    totals: dict[str, torch.Tensor] = {}
    for i, b in enumerate(batches):
        losses = run.strategy.forward_backward(run.method, b, norm, last=i == len(batches) - 1)
        for k, v in losses.items():
            totals[k] = totals[k] + v.detach().float() if k in totals else v.detach().float()
    return totals, run.strategy.grad_norms(cfg.train.max_grad_norm), tokens, generated


def token_counts(batch: dict, cpu: dict) -> tuple[int, int]:
    """(scored, seen) tokens of a prepared micro-batch: from its CPU copy when the method trains on the
    batch as given (no device read), from the batch itself when the method replaced it (samples)."""
    src = cpu if "scored_index" in batch else batch
    scored = len(src["scored_index"]) if "scored_index" in src else int((src["labels"][:, 1:] != -100).sum())
    return scored, int(src["attention_mask"].sum())


def non_finite(run: Run, totals: dict, grad_norms: dict) -> str:
    """'' when every loss and gradient norm is finite (all processes agree), else what was not.
    One device read for all of them."""
    named = {**{f"loss_{k}": v for k, v in totals.items()}, **{f"grad_norm_{k}": v for k, v in grad_norms.items()}}
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()).to(run.accelerator.device)
                          for v in named.values()])
    ok = torch.isfinite(values).all()
    if run.world > 1:  # every process takes the same decision
        ok = run.accelerator.reduce((~ok).float(), "sum") == 0
    if bool(ok):
        return ""
    what = ", ".join(f"{k}={v}" for k, v in zip(named, values.tolist()) if not math.isfinite(v))
    return what or "loss on another process"


def stop_or_skip(run: Run, what: str, bad_in_a_row: int) -> None:
    """A non-finite step changes nothing: its gradients are dropped; then skip it or stop the run."""
    run.strategy.discard()
    state, tc = run.state, run.cfg.train
    if tc.on_nan == "skip" and bad_in_a_row < MAX_BAD_IN_A_ROW:
        state.skipped += 1
        log.warning("non-finite %s at step %d: batch skipped (%d so far)", what, state.step + 1, state.skipped)
        return
    kept = checkpoint_dirs(run.ckpt_root)
    raise OkdError(f"non-finite {what} at step {state.step + 1}"
                   + (f" ({bad_in_a_row} batches in a row)" if bad_in_a_row > 1 else "")
                   + "; training stopped, "
                   + (f"last good checkpoint kept at {kept[-1]}" if kept else "no checkpoint was saved")
                   + " (lower train.lr, check the data, or set train.on_nan=skip)")


class Clock:
    """Training time (state.train_s) excludes in-loop validations and checkpoint saves (state.overhead_s);
    tokens/s of a logging window likewise."""

    def __init__(self, state):
        self.state = state
        self.start = time.perf_counter() - state.elapsed_s
        self.window_t, self.window_tokens = time.perf_counter(), 0

    def step_done(self, tokens: int) -> None:
        s = self.state
        s.tokens += tokens
        s.elapsed_s = time.perf_counter() - self.start
        s.train_s = s.elapsed_s - s.overhead_s
        self.window_tokens += tokens

    def window_rate(self) -> float:
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_t, 1e-9)
        self.window_t, self.window_tokens = now, 0
        return rate

    @contextlib.contextmanager
    def not_training(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.state.overhead_s += dt
            self.window_t += dt


def log_record(run: Run, totals: dict, grad_norms: dict, tokens_per_s: float) -> dict:
    """One metrics.jsonl record (DESIGN.md §4); the step's losses are read from the device here."""
    cfg, state, acc = run.cfg, run.state, run.accelerator
    keys = sorted(totals)
    values = torch.stack([totals[k].reshape(()) for k in keys]).double()
    if run.world > 1:  # each process holds its share (normalised by the global count): the mean
        values = acc.reduce(values, "mean")  # over processes is the loss of the whole global batch
    losses = dict(zip(keys, values.tolist()))
    record = {"step": state.step, "loss": losses["student"], "lr": run.schedulers["student"].get_last_lr()[0],
              "elapsed_s": round(state.elapsed_s, 3), "train_s": round(state.train_s, 3), "tokens": state.tokens,
              "tokens_per_s": round(tokens_per_s, 1)}
    if "online" in losses:
        record["loss_online"] = losses["online"]
        record["lr_online"] = run.schedulers["online"].get_last_lr()[0]
    if state.generated_tokens or cfg.method.name in GENERATING_METHODS:
        record["generated_tokens"] = state.generated_tokens
    record.update({f"grad_norm_{k}": round(float(v), 4) for k, v in grad_norms.items()})
    record.update(run.method.metrics)
    run.method.metrics.clear()
    return record


def checkpoint(run: Run) -> None:
    """Save the run at its current step (every process takes part), unless that step is on disk already
    (e.g. Ctrl-C right after a periodic save)."""
    if run.saved_step == run.state.step:
        return
    student, online = run.strategy.unwrapped()
    save_checkpoint(run.ckpt_root, run.state.step, accelerator=run.accelerator, student=student, online=online,
                    optimizers=run.optimizers, schedulers=run.schedulers, method_state=run.method.state_dict(),
                    state=run.state.to_dict(), keep=run.cfg.train.keep_checkpoints, **run.strategy.checkpoint_args())
    run.saved_step = run.state.step
    if run.save_clock is not None:
        run.save_clock.saved()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def summary(run: Run, final: dict) -> dict:
    cfg, state = run.cfg, run.state
    return {
        "method": cfg.method.name,
        "divergence": cfg.method.resolved_divergence,
        "teacher": cfg.method.resolved_teacher,
        "steps": state.step,
        "wall_clock_s": round(state.elapsed_s, 2),  # the loop, with its validations and checkpoint saves
        "train_s": round(state.train_s, 2),  # without them
        "tokens": state.tokens,
        "tokens_per_s": round(state.tokens / max(state.train_s, 1e-9), 1),
        "generated_tokens": state.generated_tokens,
        "skipped_steps": state.skipped,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "device": str(run.accelerator.device),
        "num_processes": run.world,
        "train_examples": len(run.features),
        "data": run.data_stats,
        "final_metrics": {k: v for k, v in final.items() if k in ("loss", "loss_online") or k.startswith("valid_")
                          or k == "online_update_norm"},
    }
