"""`okd demo --minutes M`: size the demo's training to a wall-clock budget measured on this machine.

Machines differ by 2-4x (AVX-512/AMX bf16 or not, cores, other load), so fixed step counts that fit one CPU
overrun another. The demo measures instead, after the models and data are ready and the two reference
models (teacher, untrained student) are evaluated:

1. a probe of each method: PROBE_STEPS optimizer steps on the demo's own config (one validation and the
   final save included), timed end to end: seconds per step (median of the steps after the first), and
   the fixed cost of a run (loading, validation, saving);
2. the evaluation of one student: the untrained student's evaluation took as long as a trained one's
   will at most (same architecture; a trained student stops at EOS sooner), sample answers included.

Then every method gets the same number of steps N, the largest for which the estimate of the rest of the
demo (training all methods with their validations, evaluating the trained students, the report) ends
within M minutes of the demo's start. N is clamped to [MIN_STEPS, MAX_STEPS]; a machine too slow for
even MIN_STEPS is told how far over the budget it will go. The choice and its measurements go to
`<out>/budget.json` and the report; a rerun with the same budget reuses it (and the finished runs).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

PROBE_STEPS = 3
MIN_STEPS = 8
MAX_STEPS = 400
VALIDATIONS = 3  # per run: every N // 3 steps (the learning curve's points), the last at step N
MARGIN_S = 20.0  # the report, the plots, process exit


@dataclass
class Probe:
    """One method's measured cost: a run of N steps takes about fixed_s + N·step_s + (VALIDATIONS−1)·valid_s."""

    step_s: float
    fixed_s: float  # loading, first-step warm-up, one validation, final checkpoint and save
    valid_s: float  # one validation

    def run_s(self, steps: int) -> float:
        return self.fixed_s + steps * self.step_s + (VALIDATIONS - 1) * self.valid_s


@dataclass
class Budget:
    minutes: float
    steps: int
    eval_every: int
    probes: dict[str, Probe] = field(default_factory=dict)
    eval_s: float = 0.0  # one student's evaluation (sample answers included)
    spent_s: float = 0.0  # of the budget, before training: preparation, reference evaluations, probes
    estimate_s: float = 0.0  # the demo's whole predicted wall clock
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Budget":
        probes = {k: Probe(**v) for k, v in (d.get("probes") or {}).items()}
        return cls(**{**d, "probes": probes})


def eval_every(steps: int) -> int:
    return max(1, -(-steps // VALIDATIONS))  # ceil: VALIDATIONS points, the last at the final step


def probe_from_run(run_dir: Path, total_s: float, steps: int = PROBE_STEPS) -> Probe:
    """A Probe from a finished probe run's metrics.jsonl and summary.json and its wall time end to end."""
    from okd.eval.curves import read_metrics

    records = read_metrics(run_dir)
    elapsed = [r["elapsed_s"] for r in records if "elapsed_s" in r]
    deltas = [b - a for a, b in zip(elapsed, elapsed[1:])]
    step_s = statistics.median(deltas) if deltas else (elapsed[-1] / max(len(elapsed), 1) if elapsed else total_s)
    summary = json.loads((run_dir / "summary.json").read_text())
    valid_s = max(0.0, summary.get("wall_clock_s", 0.0) - summary.get("train_s", summary.get("wall_clock_s", 0.0)))
    return Probe(step_s=step_s, fixed_s=max(0.0, total_s - steps * step_s), valid_s=valid_s)


def probe_method(cfg_tree: dict, where: Path, log: Callable[[str], None]) -> Probe:
    """Train PROBE_STEPS steps of one run's config (validating at the end, as the real run does) in `where`,
    timed; the probe directory is removed afterwards."""
    from okd.config import build_config
    from okd.train import train

    tree = json.loads(json.dumps(cfg_tree))
    tree["train"].update(max_steps=PROBE_STEPS, eval_every=0, save_every=0, log_every=1, warmup_steps=1,
                         save_every_minutes=0)
    tree["output_dir"] = str(where)
    shutil.rmtree(where, ignore_errors=True)
    t0 = time.perf_counter()
    train(build_config(tree), progress=False)
    probe = probe_from_run(where, time.perf_counter() - t0)
    shutil.rmtree(where, ignore_errors=True)
    log(f"probe {tree['method']['name']}: {probe.step_s:.2f} s/step, {probe.fixed_s:.0f} s per run besides "
        f"(loading, validation {probe.valid_s:.1f} s, saving)")
    return probe


def choose_steps(probes: dict[str, Probe], *, remaining_s: float, eval_s: float) -> tuple[int, float, str]:
    """(N, the estimate of the rest in seconds, a note): the most steps per method that fit `remaining_s`."""
    fixed = sum(p.run_s(0) for p in probes.values()) + len(probes) * eval_s + MARGIN_S
    per_step = sum(p.step_s for p in probes.values()) or 1e-9
    fit = int((remaining_s - fixed) // per_step)
    steps = min(max(fit, MIN_STEPS), MAX_STEPS)
    rest = fixed + steps * per_step
    note = ""
    if fit < MIN_STEPS:
        note = (f"this machine fits only {max(fit, 0)} step(s) per method in the budget; running {MIN_STEPS}, "
                f"about {(rest - remaining_s) / 60:.1f} min over (give more --minutes, or --steps)")
    elif fit > MAX_STEPS:
        note = f"capped at {MAX_STEPS} steps per method (the budget would allow {fit})"
    return steps, rest, note


def load_budget(path: Path, minutes: float) -> Budget | None:
    """The budget a previous demo chose for the same --minutes, if any."""
    try:
        b = Budget.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return b if abs(b.minutes - minutes) < 1e-9 else None


def describe(b: Budget) -> str:
    """One paragraph for the report: what was measured and what was chosen."""
    probes = ", ".join(f"{m} {p.step_s:.2f}" for m, p in b.probes.items())
    text = (f"Budget: `--minutes {b.minutes:g}`, measured on this machine: seconds per training step {probes} "
            f"({PROBE_STEPS}-step probes), {b.eval_s:.0f} s to evaluate one student; {b.spent_s:.0f} s went into "
            f"preparation, reference evaluations and probes. Chosen: **{b.steps} steps per method** "
            f"(validation every {b.eval_every}), predicted total {b.estimate_s / 60:.1f} min.")
    return text + (f" Note: {b.note}." if b.note else "")
