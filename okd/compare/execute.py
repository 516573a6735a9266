"""Running a plan: what is on disk already, training what is missing, evaluating it, `run_compare`.

A run with summary.json and student/ is complete and skipped; one with checkpoints is resumed; an
evaluation whose JSON carries the same settings stamp is skipped. A run directory trained with
another config (beyond logging keys) is refused rather than silently reused. A run imported from an
archive (okd.compare.archive: results, no weights) is skipped too, unless another run needs its weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from okd.compare.archive import export_results, forget_import, import_results, weights_fingerprint, write_provenance
from okd.compare.caches import describe_caches, ensure_teacher_cache
from okd.compare.grid import Plan, Run, format_value, load_grid, plan_grid
from okd.compare.report import write_report
from okd.compare.settings import eval_config, eval_settings, exposure_oracle_run, exposure_runs
from okd.compare.state import eval_done, run_status, weights_owner
from okd.config import LOGGING_KEYS, config_diff
from okd.errors import OkdError
from okd.progress import fmt_s

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- state of a run

def check_run_config(run: Run) -> None:
    """A run directory trained with another config would give stale results: refuse it."""
    path = run.dir / "config.yaml"
    if not path.is_file() or run_status(run) == "new":
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    diff = [f"{k} ({a!r} -> {b!r})" for k, (a, b) in config_diff(old, run.cfg.model_dump(mode="json")).items()
            if k not in LOGGING_KEYS]
    if diff:
        raise OkdError(f"run {run.name!r}: {run.dir} was trained with another config (differs at "
                       f"{'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}); delete that directory "
                       f"to retrain, or give the run another name")


def _stamp(path: Path, settings: dict, model: str) -> None:
    res = json.loads(path.read_text())
    res["compare_settings"] = settings
    res["compare_model"] = model
    res["compare_model_sha"] = weights_fingerprint(model)  # which weights, across machines
    path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


def describe_plan(plan: Plan) -> str:
    """What --dry-run prints: the student inits, the reference rows, a table of runs and their state."""
    from okd.eval.report import markdown_table

    rows = []
    for r in plan.runs:
        status = f"= {r.same_as}" if r.same_as else run_status(r)
        ev = "-"
        if r.name == plan.spec.teacher_from:
            ev = "the teacher row"
        elif plan.spec.eval is not None:
            label = plan.trained(r).name
            ev = "done" if eval_done(plan, label) else "todo"
            if label in exposure_runs(plan) or r.name in exposure_runs(plan):
                xdone = eval_done(plan, label, exposure=True)
                ev += ", exposure " + ("done" if xdone else "todo")
        ov = ", ".join(f"{k}={format_value(v) if not isinstance(v, str) else v}" for k, v in r.overrides.items())
        rows.append([r.name, r.cfg.method.name, ov or "-", r.student_from or "-", r.teacher_from or "-",
                     r.cfg.train.max_steps, status, ev])
    lines = [f"grid: {plan.source or '(tree)'} -> {plan.out}", ""]
    for init in plan.inits:
        have = "cached" if (init.path / "config.json").is_file() else "to create"
        lines.append(f"student init: {init.layers} layers of {init.source} ({init.strategy}) at {init.path} ({have})")
    lines += describe_caches(plan.caches)
    if plan.spec.eval is not None and plan.spec.eval.references:
        lines.append("reference rows: " + ", ".join(plan.spec.eval.references))
    if plan.spec.teacher_from:
        lines.append(f"teacher: the model trained by run {plan.spec.teacher_from} ({plan.teacher}), from "
                     f"{plan.teacher_base}")
    lines += ["", markdown_table(["run", "method", "overrides", "student from", "teacher from", "steps", "training",
                                  "eval"], rows)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- training

def _say(msg: str) -> None:
    print(f"[okd compare] {msg}", file=sys.stderr, flush=True)


def ensure_student_inits(plan: Plan, log: Log) -> None:
    from okd.models.prune import init_student
    from okd.paths import atomic_dir

    for init in plan.inits:
        if (init.path / "config.json").is_file():
            continue
        log(f"student init: {init.layers} layers of {init.source} ({init.strategy}) -> {init.path}")
        with atomic_dir(init.path) as tmp:
            _, nt, ns = init_student(init.source, init.layers, init.strategy, tmp, overwrite=True)
        log(f"student init: teacher {nt / 1e6:.1f}M parameters, student {ns / 1e6:.1f}M")


def _train_subprocess(run: Run, threads: int | None, progress: bool) -> None:
    """`okd train -c <run>/config.yaml --resume` in a fresh process (per-run peak memory, isolation)."""
    run.dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run.dir / "config.yaml"
    cfg_path.write_text(run.cfg.to_yaml())
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, "-m", "okd", "train", "-c", str(cfg_path), "--resume"]
    if not progress:
        cmd.append("--quiet")
    log_path = run.dir / "train.log"
    with open(log_path, "a") as logf:
        logf.write(f"\n$ {' '.join(cmd)}\n")
        logf.flush()
        if progress:
            proc = subprocess.run(cmd, env=env)
        else:
            proc = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = ""
        if not progress:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            tail = f": {lines[-1].strip()}" if lines else ""
        raise OkdError(f"run {run.name!r} failed (exit {proc.returncode}){tail}; see {log_path}")


def _train_inprocess(run: Run, progress: bool) -> None:
    from okd.train import train

    train(run.cfg, resume=True, progress=progress)


def train_run(run: Run, *, isolate: bool, threads: int | None, progress: bool) -> None:
    status = run_status(run)
    if status == "new":
        # a run killed before its first checkpoint: start clean (the trainer appends to metrics.jsonl)
        for stale in ("metrics.jsonl", "summary.json"):
            (run.dir / stale).unlink(missing_ok=True)
    if isolate:
        _train_subprocess(run, threads, progress)
    else:
        _train_inprocess(run, progress)


def _weights_needed(plan: Plan, selection: Selection) -> dict[str, str]:
    """{run: what needs it} for the runs whose weights this call reads: a run to train needs the runs its
    student and teacher come from, a missing evaluation needs the model evaluated (and the teacher, the
    oracle of exposure bias). An imported run in here is trained again (okd.compare.archive)."""
    need: dict[str, str] = {}
    if plan.spec.eval is not None:
        oracle = exposure_oracle_run(plan)
        for label, _, exposure in _models_to_evaluate(plan, selection):
            rouge = not eval_done(plan, label)
            xpos = exposure and not eval_done(plan, label, exposure=True)
            if rouge or xpos:
                need.setdefault(weights_owner(plan, label), f"the evaluation of {label}")
            if xpos and oracle:
                need.setdefault(oracle, f"the exposure bias of {label} (its oracle)")
    for r in reversed([r for r in plan.runs if r.name in selection.train and not r.same_as]):
        status = run_status(r)
        if status == "complete" or (status == "imported" and r.name not in need):
            continue
        for dep in (r.student_from, r.teacher_from):
            if dep:
                need.setdefault(plan.trained(plan.run(dep)).name, f"run {r.name}")
    return need


def _train_all(plan: Plan, selection: Selection, *, progress: bool, log: Log, elapsed: Callable[[], str]) -> None:
    spec = plan.spec
    todo = [r for r in plan.runs if r.name in selection.train]
    need = _weights_needed(plan, selection)
    for i, r in enumerate(todo, start=1):
        head = f"train {i}/{len(todo)} {r.name}"
        if r.same_as:
            log(f"{head}: same config as {r.same_as}, reusing it")
            continue
        status = run_status(r)
        if status == "complete":
            log(f"{head}: complete, skipped")
            continue
        if status == "imported":
            if r.name not in need:
                log(f"{head}: imported (results without weights), skipped")
                continue
            log(f"{head}: imported without weights, which {need[r.name]} needs: training it again (its imported "
                "evaluations count again only if it gives the same weights)")
            forget_import(plan, r)
            status = run_status(r)
        what = "resuming " + status.split("(")[1].rstrip(")") if status.startswith("partial") else "starting"
        log(f"{head}: {what}: method {r.cfg.method.name}, {r.cfg.train.max_steps} steps × batch "
            f"{r.cfg.train.batch_size}{f', student from {r.student_from}' if r.student_from else ''} "
            f"[grid elapsed {elapsed()}]")
        if (cache := plan.cache_of(r)) is not None:
            ensure_teacher_cache(cache, r.cfg, log)
        t0 = time.perf_counter()
        train_run(r, isolate=spec.isolate, threads=spec.threads, progress=progress)
        if not spec.keep_checkpoints:
            shutil.rmtree(r.dir / "checkpoints", ignore_errors=True)  # optimizer states: GBs per run
        write_provenance(r)
        s = json.loads((r.dir / "summary.json").read_text())
        log(f"{head}: done in {fmt_s(time.perf_counter() - t0)} (training {s.get('train_s', s['wall_clock_s']):.0f} s, "
            f"{s['tokens_per_s']:.0f} tokens/s, valid CE {s['final_metrics'].get('valid_loss', float('nan')):.3f})")


# ----------------------------------------------------------------------------- evaluation

def evaluate_model(plan: Plan, label: str, model: str, *, exposure: bool, log: Log) -> list[str]:
    """ROUGE-L eval (and exposure bias) of one model; returns what was done (for the progress line)."""
    from okd.eval import run_eval

    eval_dir = plan.out / "eval"
    done = []
    s = eval_settings(plan, False)
    target = eval_dir / f"{label}.json"
    if not eval_done(plan, label):
        t0 = time.perf_counter()
        run_eval(model, s["data"], target, eval_config(plan, False), log=lambda m: None)
        _stamp(target, s, model)
        res = json.loads(target.read_text())
        scores = ", ".join(f"{n} {d['rougeL']['mean']:.2f}" for n, d in res["datasets"].items())
        done.append(f"ROUGE-L {scores} ({fmt_s(time.perf_counter() - t0)})")
    if exposure:
        xs = eval_settings(plan, True)
        xtarget = eval_dir / f"{label}.exposure.json"
        if not eval_done(plan, label, exposure=True):
            t0 = time.perf_counter()
            run_eval(model, xs["data"], xtarget, eval_config(plan, True), teacher_path=xs["teacher"],
                     log=lambda m: None)
            _stamp(xtarget, xs, model)
            res = json.loads(xtarget.read_text())
            at = next(iter(res["datasets"].values()))["exposure_bias"]["at_l"]
            done.append(f"ExAccErr@{xs['length']} {'n/a' if at is None else f'{at:.1f}%'} "
                        f"({fmt_s(time.perf_counter() - t0)})")
    return done


def _models_to_evaluate(plan: Plan, selection: Selection) -> list[tuple[str, str, bool]]:
    """(label, model path, with exposure bias) for the selected reference rows and trained runs."""
    xruns = exposure_runs(plan)
    paths = {"teacher": plan.teacher, "teacher_base": plan.teacher_base, "student_init": plan.student_init}
    models = [(ref, paths[ref], False) for ref in plan.spec.eval.references if ref in selection.references]
    seen: set[str] = set()
    for r in plan.runs:
        t = plan.trained(r)
        if r.name not in selection.evaluate or t.name in seen or r.name == plan.spec.teacher_from:
            continue  # (the tuned teacher is evaluated as the teacher row)
        seen.add(t.name)
        models.append((t.name, str(t.dir / "student"),
                       t.name in xruns or any(x.same_as == t.name and x.name in xruns for x in plan.runs)
                       or r.name in xruns))
    return models


def _eval_all(plan: Plan, selection: Selection, *, log: Log, elapsed: Callable[[], str]) -> None:
    models = _models_to_evaluate(plan, selection)
    for i, (label, model, exposure) in enumerate(models, start=1):
        head = f"eval {i}/{len(models)} {label}"
        if not eval_done(plan, label) or (exposure and not eval_done(plan, label, exposure=True)):
            log(f"{head}: evaluating [grid elapsed {elapsed()}]")
            done = evaluate_model(plan, label, model, exposure=exposure, log=log)
            log(f"{head}: {'; '.join(done)}")
        else:
            log(f"{head}: evaluated already, skipped")


# ----------------------------------------------------------------------------- the command

@dataclass
class Selection:
    """What one call works on: the runs to train (the named ones and the runs they need), the runs and
    reference rows to evaluate (the named ones only, so two processes given different names never
    evaluate the same model)."""

    train: list[str]
    evaluate: set[str]
    references: set[str]


def _select(plan: Plan, only: list[str] | None, *, dry_run: bool, log: Log) -> Selection:
    """All runs and reference rows, or --only's names and the runs they need (the run they duplicate,
    the run their student comes from), trained but evaluated only where named."""
    names = [r.name for r in plan.runs]
    refs = set(plan.spec.eval.references) if plan.spec.eval is not None else set()
    if not only:
        return Selection(names, set(names), refs)
    unknown = [n for n in only if n not in names and n not in refs]
    if unknown:
        raise OkdError(f"--only: no run named {', '.join(map(repr, unknown))} in the grid; runs: "
                       f"{', '.join(names)}{''.join(f', {r}' for r in sorted(refs))}")
    wanted = {n for n in only if n in names}
    tuned = plan.spec.teacher_from  # the teacher row evaluates that run's model: either name selects both
    if tuned and ("teacher" in only or tuned in only):
        wanted.add(tuned)
        only = [*only, "teacher"] if "teacher" in refs and "teacher" not in only else only
    changed = True
    while changed:
        changed = False
        for r in plan.runs:
            if r.name in wanted:
                for dep in (r.same_as, r.student_from, r.teacher_from):
                    if dep and dep not in wanted:
                        wanted.add(dep)
                        changed = True
    added = sorted(wanted - set(only))
    if added and not dry_run:
        log(f"--only: also training {', '.join(added)} if missing (needed by the selected runs; "
            f"evaluated only when named)")
    return Selection([n for n in names if n in wanted], set(only) & set(names), set(only) & refs)


def run_compare(grid: str | Path | dict, *, only: list[str] | None = None, dry_run: bool = False,
                report_only: bool = False, progress: bool = False, log: Log = _say,
                report: Callable[[Plan], object] | None = None, import_from: Path | None = None,
                export_to: Path | None = None, lanes: int | None = None, evaluate: bool = True,
                write: bool = True) -> Plan:
    """Train, evaluate and report a grid; returns the plan. See okd.compare's docstring for the format.

    `import_from`: first put into the output_dir the runs and evaluations of that archive it lacks;
    `export_to`: at the end copy the results (no weights) into that archive (okd.compare.archive).
    `lanes`: run that many runs at once, each in its own process (okd.compare.lanes). `evaluate=False`
    trains only; `write=False` leaves the report (and the export) for a later call.

    `report(plan)` writes the report instead of okd.compare.report.write_report (okd demo's own).
    """
    plan = plan_grid(grid) if isinstance(grid, dict) else plan_grid(load_grid(grid), source=str(grid))
    if plan.spec.threads:
        import torch

        torch.set_num_threads(plan.spec.threads)
    selection = _select(plan, only, dry_run=dry_run, log=log)
    if not report_only:
        for r in plan.runs:
            if r.name in selection.train and not r.same_as:
                check_run_config(r)
    if dry_run:
        if import_from is not None and not Path(import_from).is_dir():
            raise OkdError(f"--import: {import_from} does not exist; write it with --export first")
        print(describe_plan(plan))
        return plan

    t_start = time.perf_counter()

    def elapsed() -> str:
        return fmt_s(time.perf_counter() - t_start)

    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.source and Path(plan.source).resolve() != (plan.out / "grid.yaml").resolve():
        shutil.copyfile(plan.source, plan.out / "grid.yaml")  # what produced this directory
    if import_from is not None:
        import_results(plan, Path(import_from), log)
    if not report_only:
        ensure_student_inits(plan, log)
        if lanes and lanes > 1:
            from okd.compare.lanes import run_lanes

            run_lanes(plan, selection, lanes, need=_weights_needed(plan, selection), evaluate=evaluate, log=log,
                      elapsed=elapsed)
        else:
            _train_all(plan, selection, progress=progress, log=log, elapsed=elapsed)
            if plan.spec.eval is not None and evaluate:
                _eval_all(plan, selection, log=log, elapsed=elapsed)
    if not write:
        return plan
    if report is not None:
        report(plan)
        return plan
    paths = write_report(plan)
    log(f"report: {paths['report']} (+ results.csv, results.json, {len(paths['plots'])} plots) "
        f"[grid elapsed {elapsed()}]")
    if export_to is not None:
        export_results(plan, Path(export_to), log)
    return plan
