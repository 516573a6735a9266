"""`okd compare`: many methods, one teacher, one student initialisation, one data set, one budget.

A grid file (YAML) names what to run and how to evaluate it:

    output_dir: runs/compare          # runs/<name>/, eval/<name>.json, report.md, results.*, *.png
    threads: 2                        # optional: torch threads for training and evaluation
    base:                             # an `okd train` config tree shared by every run
      teacher: {path: smollm2-135m-instruct}
      student:
        init: {from: smollm2-135m-instruct, layers: 10, strategy: uniform}   # depth-pruned once, cached
      data: {train: sharegpt, valid: sharegpt, template: chat, max_length: 256}
      train: {max_steps: 40, batch_size: 4, eval_every: 10}
    runs:                             # each: a name and dotted overrides of `base`
      - {name: sft, overrides: {method.name: sft}}
      - {name: okd, overrides: {method.name: okd}}
      - {name: minillm, student_from: sft, overrides: {method.name: minillm}}   # starts from sft's student
    sweeps:                           # shorthand: one run per value, on top of `base_run`'s overrides
      - {name: okd_rank, base_run: okd, key: online.rank, values: [16, 64]}       # okd_rank_16, okd_rank_64
    eval:
      data: [sharegpt, seed-tasks]
      split: test
      seeds: 3
      max_new_tokens: 64
      limit: 32
      references: [teacher, student_init]   # also evaluate these, untrained, as reference rows
      exposure: {runs: [sft, fkd, okd], prompts: 8, samples: 2, max_len: 64, length: 32}

Every run trains in `<output_dir>/runs/<name>` (its own process by default, `isolate: true`, so
peak memory is per run). A run with summary.json is complete and skipped; one with checkpoints
is resumed; an evaluation whose JSON exists (with the same settings) is skipped. So re-running the
command after an interruption, or after adding runs, does only the missing work. A run whose
resolved config equals an earlier run's is not trained twice: it reuses that run (shown as
"= name"). The grid is validated like a config: an unknown key is an error naming it, before anything
runs.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from okd.config import Config, _set_dotted, build_config, read_yaml_mapping
from okd.errors import OkdError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
REFERENCE_LABELS = {"teacher": "teacher", "student_init": "student_init"}


# ----------------------------------------------------------------------------- the grid schema

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RunSpec(_Section):
    name: str
    overrides: dict[str, Any] = {}
    student_from: str | None = None  # start from this run's trained student (e.g. minillm from sft)
    note: str | None = None


class SweepSpec(_Section):
    name: str  # prefix of the expanded runs: <name>_<value>
    base_run: str
    key: str  # a dotted config key, e.g. online.rank
    values: list[Any]
    labels: list[str] | None = None  # run-name suffixes instead of the formatted values

    @field_validator("values")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one value")
        return v


class StudentInit(_Section):
    from_: str = Field(alias="from")  # teacher preset or HF directory
    layers: int
    strategy: Literal["uniform", "first", "last"] = "uniform"
    path: str | None = None  # where to keep it (default <output_dir>/students/<from>-<layers>l-<strategy>)


class ExposureSpec(_Section):
    runs: list[str] | None = None  # default: every run
    data: str | None = None  # default: the first eval.data entry
    teacher: str | None = None  # the oracle; default base teacher.path
    prompts: int = 8
    samples: int = 2
    max_len: int = 64
    length: int = 32


class EvalSpec(_Section):
    data: list[str]
    split: str = "test"
    seeds: int = 3
    greedy: bool = False
    max_new_tokens: int = 64
    max_prompt_length: int = 256
    limit: int | None = None
    template: Literal["alpaca", "chat", "plain"] | None = None  # default: base data.template
    batch_size: int = 16
    references: list[Literal["teacher", "student_init"]] = []
    exposure: ExposureSpec | None = None

    @field_validator("data")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one data set")
        return v


class GridSpec(_Section):
    output_dir: str
    base: dict[str, Any] = {}
    runs: list[RunSpec] = []
    sweeps: list[SweepSpec] = []
    eval: EvalSpec | None = None
    threads: int | None = None
    isolate: bool = True  # train each run in its own process (per-run peak memory)
    keep_checkpoints: bool = True  # false: delete a run's checkpoints/ once it is complete (student/ stays)
    title: str | None = None


# ----------------------------------------------------------------------------- the resolved plan

@dataclass
class Run:
    name: str
    cfg: Config
    overrides: dict[str, Any]
    student_from: str | None = None
    sweep: str | None = None  # the sweep it came from
    sweep_value: Any = None
    same_as: str | None = None  # an earlier run with the same config: reused
    note: str | None = None

    @property
    def dir(self) -> Path:
        return Path(self.cfg.output_dir)


@dataclass
class StudentInitPlan:
    source: str
    layers: int
    strategy: str
    path: Path


@dataclass
class Plan:
    spec: GridSpec
    out: Path
    runs: list[Run]
    inits: list[StudentInitPlan] = field(default_factory=list)
    teacher: str | None = None
    student_init: str | None = None  # the shared student initialisation (for the reference row)
    source: str | None = None  # the grid file

    def run(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)

    def trained(self, run: Run) -> Run:
        """The run whose directory holds the result (itself, or the one it duplicates)."""
        return self.run(run.same_as) if run.same_as else run


def _describe(error: ValidationError, prefix: str = "grid key") -> str:
    parts = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see okd compare --help for the grid format)"
        parts.append(f"{prefix} {key!r}: {msg}" if key else msg)
    return "; ".join(parts)


def format_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(format_value(x) for x in v)
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", str(v)).strip("-") or "x"


def _get_dotted(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def load_grid(path: str | Path) -> dict:
    return read_yaml_mapping(path, "grid", "(output_dir:, base:, runs:, eval:)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(text)).name).strip("-.") or "model"


def _init_path(out: Path, init: StudentInit) -> Path:
    """Where a student initialisation is kept: its `path`, else one folder per (teacher, k, strategy)."""
    return Path(init.path) if init.path else out / "students" / f"{_slug(init.from_)}-{init.layers}l-{init.strategy}"


def plan_grid(tree: dict, *, source: str | None = None, base_dir: Path | None = None) -> Plan:
    """Validate a grid tree and resolve every run's config; raises OkdError naming the bad key."""
    try:
        spec = GridSpec.model_validate(tree)
    except ValidationError as e:
        raise OkdError(_describe(e)) from None
    out = Path(spec.output_dir)
    if base_dir is not None and not out.is_absolute():
        out = base_dir / out
    base = copy.deepcopy(spec.base)
    if "output_dir" in base:
        raise OkdError("grid key 'base.output_dir': each run trains in <output_dir>/runs/<name>; "
                       "set output_dir at the top of the grid instead")

    # runs, then sweeps expanded in order
    specs: list[tuple[RunSpec, str | None, Any]] = [(r, None, None) for r in spec.runs]
    by_name = {r.name: r for r in spec.runs}
    for i, sw in enumerate(spec.sweeps):
        if sw.base_run not in by_name:
            raise OkdError(f"grid key 'sweeps.{i}.base_run': no run named {sw.base_run!r} in runs:")
        if sw.labels is not None and len(sw.labels) != len(sw.values):
            raise OkdError(f"grid key 'sweeps.{i}.labels': {len(sw.labels)} labels for {len(sw.values)} values")
        parent = by_name[sw.base_run]
        for j, value in enumerate(sw.values):
            suffix = sw.labels[j] if sw.labels else format_value(value)
            run = RunSpec(name=f"{sw.name}_{suffix}", overrides={**parent.overrides, sw.key: value},
                          student_from=parent.student_from, note=parent.note)
            specs.append((run, sw.name, value))
    if not specs:
        raise OkdError("grid key 'runs': the grid has no runs; list at least one {name, overrides}")

    seen: set[str] = set()
    for i, (r, _, _) in enumerate(specs):
        if not NAME_RE.match(r.name):
            raise OkdError(f"run name {r.name!r}: use letters, digits and _ . = + - only (it names a directory)")
        if r.name in seen:
            raise OkdError(f"run name {r.name!r} is used twice; run names must be unique (sweeps make <name>_<value>)")
        if r.name in REFERENCE_LABELS:
            raise OkdError(f"run name {r.name!r} is reserved for the reference rows; choose another")
        seen.add(r.name)
    for r, _, _ in specs:
        if r.student_from is not None and r.student_from not in seen:
            raise OkdError(f"run {r.name!r}: student_from {r.student_from!r} is not a run of this grid")

    # dependency order (stable): a run comes after the run its student comes from
    ordered: list[tuple[RunSpec, str | None, Any]] = []
    placed: set[str] = set()
    pending = list(specs)
    while pending:  # stable: always place the first run whose dependency is placed
        item = next((it for it in pending if it[0].student_from is None or it[0].student_from in placed), None)
        if item is None:
            raise OkdError("runs form a student_from cycle: " + ", ".join(f"{r.name} <- {r.student_from}"
                                                                         for r, _, _ in pending))
        ordered.append(item)
        placed.add(item[0].name)
        pending.remove(item)

    # the base alone must be a valid config (so a typo in base: is reported once, as such)
    base_tree = copy.deepcopy(base)
    base_student = base_tree.get("student")
    base_init = base_student.pop("init", None) if isinstance(base_student, dict) else None
    try:
        build_config(base_tree)
    except OkdError as e:
        raise OkdError(f"grid base: {e}") from None

    inits: dict[tuple, StudentInitPlan] = {}
    runs: list[Run] = []
    resolved: dict[str, dict] = {}
    student_init_path: str | None = None
    for r, sweep, value in ordered:
        tree = copy.deepcopy(base)
        for key, val in r.overrides.items():
            if key == "output_dir" or key.startswith("output_dir."):
                raise OkdError(f"run {r.name!r}: override 'output_dir' is not allowed; runs train in "
                               "<output_dir>/runs/<name>")
            try:
                _set_dotted(tree, key, val)
            except OkdError as e:
                raise OkdError(f"run {r.name!r}: {e}") from None
        student = tree.get("student")
        init_raw = student.pop("init", None) if isinstance(student, dict) else None
        if init_raw is not None:
            try:
                init = StudentInit.model_validate(init_raw)
            except ValidationError as e:
                raise OkdError(_describe(e, f"run {r.name!r}: grid key 'student.init'")) from None
            if student.get("path"):
                raise OkdError(f"run {r.name!r}: set either student.path or student.init, not both")
            ipath = _init_path(out, init)
            ikey = (init.from_, init.layers, init.strategy, str(ipath))
            inits.setdefault(ikey, StudentInitPlan(init.from_, init.layers, init.strategy, ipath))
            student["path"] = str(ipath)
        if r.student_from is not None:
            tree.setdefault("student", {})["path"] = str(out / "runs" / r.student_from / "student")
        tree["output_dir"] = str(out / "runs" / r.name)
        try:
            cfg = build_config(tree)
        except OkdError as e:
            raise OkdError(f"run {r.name!r}: {e}") from None
        if cfg.student.path is None:
            raise OkdError(f"run {r.name!r}: no student; set base.student.path or base.student.init")
        run = Run(name=r.name, cfg=cfg, overrides=dict(r.overrides), student_from=r.student_from, sweep=sweep,
                  sweep_value=value, note=r.note)
        key_tree = cfg.model_dump(mode="json")
        key_tree.pop("output_dir")
        key_tree["method"].pop("seqkd_cache", None)
        for other, other_tree in resolved.items():
            if other_tree == key_tree:
                run.same_as = other
                break
        if run.same_as is None:
            resolved[r.name] = key_tree
        runs.append(run)
    if base_init is not None:
        try:
            first = StudentInit.model_validate(base_init)
        except ValidationError as e:
            raise OkdError(_describe(e, "grid key 'base.student.init'")) from None
        student_init_path = str(_init_path(out, first))
    else:
        student_init_path = (spec.base.get("student") or {}).get("path")
    teacher = (spec.base.get("teacher") or {}).get("path")

    if spec.eval is not None:
        ev = spec.eval
        if "teacher" in ev.references and not teacher:
            raise OkdError("grid key 'eval.references': 'teacher' needs base.teacher.path")
        if "student_init" in ev.references and not student_init_path:
            raise OkdError("grid key 'eval.references': 'student_init' needs base.student.path or base.student.init")
        if ev.exposure is not None:
            for name in ev.exposure.runs or []:
                if name not in seen:
                    raise OkdError(f"grid key 'eval.exposure.runs': no run named {name!r}")
            if not (ev.exposure.teacher or teacher):
                raise OkdError("grid key 'eval.exposure.teacher': exposure bias needs a teacher (or base.teacher.path)")
            if not 1 <= ev.exposure.length <= ev.exposure.max_len:
                raise OkdError("grid key 'eval.exposure.length': must be between 1 and eval.exposure.max_len")
        for key in ("seeds", "max_new_tokens", "batch_size", "max_prompt_length"):
            if getattr(ev, key) < 1:
                raise OkdError(f"grid key 'eval.{key}': must be >= 1")
    return Plan(spec=spec, out=out, runs=runs, inits=list(inits.values()), teacher=teacher,
                student_init=student_init_path, source=source)


# ----------------------------------------------------------------------------- state of a run

def run_status(run: Run) -> str:
    """'complete', 'partial (step N)' or 'new'."""
    d = run.dir
    if (d / "summary.json").is_file() and (d / "student").is_dir():
        return "complete"
    ckpts = sorted((d / "checkpoints").glob("step-*")) if (d / "checkpoints").is_dir() else []
    if ckpts:
        m = re.search(r"(\d+)$", ckpts[-1].name)
        return f"partial (step {int(m.group(1)) if m else '?'})"
    return "new"


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ; a key on one side only (an option added or removed since) is ignored."""
    keys = []
    for k in sorted(set(a) & set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return keys


# Keys that change how a run is logged or saved, not what it learns: changing them keeps the run.
HARMLESS_KEYS = {"train.save_every", "train.keep_checkpoints", "train.log_every", "train.trackers",
                 "train.num_workers"}


def check_run_config(run: Run) -> None:
    """A run directory trained with another config would give stale results: refuse it."""
    path = run.dir / "config.yaml"
    if not path.is_file() or run_status(run) == "new":
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    new = run.cfg.model_dump(mode="json")
    diff = [d for d in _config_diff(old, new) if d.split(" ")[0] not in HARMLESS_KEYS]
    if diff:
        raise OkdError(f"run {run.name!r}: {run.dir} was trained with another config (differs at "
                       f"{'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}); delete that directory "
                       f"to retrain, or give the run another name")


# ----------------------------------------------------------------------------- execution

def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _say(msg: str) -> None:
    print(f"[okd compare] {msg}", file=sys.stderr, flush=True)


def ensure_student_inits(plan: Plan, log: Callable[[str], None]) -> None:
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


def eval_settings(plan: Plan, exposure: bool) -> dict:
    ev = plan.spec.eval
    template = ev.template or plan.runs[0].cfg.data.template
    s = dict(data=list(ev.data), split=ev.split, seeds=ev.seeds, greedy=ev.greedy, template=template,
             max_new_tokens=ev.max_new_tokens, max_prompt_length=ev.max_prompt_length, limit=ev.limit,
             batch_size=ev.batch_size)
    if exposure:
        ex = ev.exposure
        s = dict(data=[ex.data or ev.data[0]], split=ev.split, template=template, teacher=ex.teacher or plan.teacher,
                 prompts=ex.prompts, samples=ex.samples, max_len=ex.max_len, length=ex.length,
                 max_prompt_length=ev.max_prompt_length, batch_size=ev.batch_size)
    return s


def _eval_current(path: Path, settings: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("compare_settings") == settings
    except (json.JSONDecodeError, OSError):
        return False


def _stamp(path: Path, settings: dict, model: str) -> None:
    res = json.loads(path.read_text())
    res["compare_settings"] = settings
    res["compare_model"] = model
    path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


def evaluate_model(plan: Plan, label: str, model: str, *, exposure: bool, log) -> list[str]:
    """ROUGE-L eval (and exposure bias) of one model; returns what was done (for the progress line)."""
    from okd.eval import run_eval

    ev = plan.spec.eval
    eval_dir = plan.out / "eval"
    done = []
    s = eval_settings(plan, False)
    target = eval_dir / f"{label}.json"
    if not _eval_current(target, s):
        t0 = time.perf_counter()
        run_eval(model, s["data"], target, split=s["split"], template=s["template"], seeds=s["seeds"],
                 greedy=s["greedy"], max_new_tokens=s["max_new_tokens"], max_prompt_length=s["max_prompt_length"],
                 limit=s["limit"], batch_size=s["batch_size"], log=lambda m: None)
        _stamp(target, s, model)
        res = json.loads(target.read_text())
        scores = ", ".join(f"{n} {d['rougeL']['mean']:.2f}" for n, d in res["datasets"].items())
        done.append(f"ROUGE-L {scores} ({_fmt_s(time.perf_counter() - t0)})")
    if exposure:
        xs = eval_settings(plan, True)
        xtarget = eval_dir / f"{label}.exposure.json"
        if not _eval_current(xtarget, xs):
            t0 = time.perf_counter()
            # one greedy pass on the exposure prompts (cheap) + exposure bias + teacher-forced stats
            run_eval(model, xs["data"], xtarget, teacher_path=xs["teacher"], split=xs["split"],
                     template=xs["template"], greedy=True, max_new_tokens=min(ev.max_new_tokens, 16),
                     max_prompt_length=xs["max_prompt_length"], limit=xs["prompts"], batch_size=xs["batch_size"],
                     exposure_samples=xs["samples"], exposure_max_len=xs["max_len"], exposure_length=xs["length"],
                     log=lambda m: None)
            _stamp(xtarget, xs, model)
            res = json.loads(xtarget.read_text())
            at = next(iter(res["datasets"].values()))["exposure_bias"]["at_l"]
            done.append(f"ExAccErr@{xs['length']} {'n/a' if at is None else f'{at:.1f}%'} "
                        f"({_fmt_s(time.perf_counter() - t0)})")
    return done


def exposure_runs(plan: Plan) -> set[str]:
    ev = plan.spec.eval
    if ev is None or ev.exposure is None:
        return set()
    return set(ev.exposure.runs) if ev.exposure.runs is not None else {r.name for r in plan.runs}


def describe_plan(plan: Plan) -> str:
    from okd.eval.report import markdown_table

    rows = []
    for r in plan.runs:
        status = f"= {r.same_as}" if r.same_as else run_status(r)
        ev = "-"
        if plan.spec.eval is not None:
            label = plan.trained(r).name
            ev = "done" if _eval_current(plan.out / "eval" / f"{label}.json", eval_settings(plan, False)) else "todo"
            if label in exposure_runs(plan) or r.name in exposure_runs(plan):
                xdone = _eval_current(plan.out / "eval" / f"{label}.exposure.json", eval_settings(plan, True))
                ev += ", exposure " + ("done" if xdone else "todo")
        ov = ", ".join(f"{k}={format_value(v) if not isinstance(v, str) else v}" for k, v in r.overrides.items())
        rows.append([r.name, r.cfg.method.name, ov or "-", r.student_from or "-", r.cfg.train.max_steps, status, ev])
    lines = [f"grid: {plan.source or '(tree)'} -> {plan.out}", ""]
    for init in plan.inits:
        have = "cached" if (init.path / "config.json").is_file() else "to create"
        lines.append(f"student init: {init.layers} layers of {init.source} ({init.strategy}) at {init.path} ({have})")
    if plan.spec.eval is not None and plan.spec.eval.references:
        lines.append("reference rows: " + ", ".join(plan.spec.eval.references))
    lines += ["", markdown_table(["run", "method", "overrides", "student from", "steps", "training", "eval"], rows)]
    return "\n".join(lines)


def run_compare(grid: str | Path | dict, *, only: list[str] | None = None, dry_run: bool = False,
                report_only: bool = False, progress: bool = False, log: Callable[[str], None] = _say) -> Plan:
    """Train, evaluate and report a grid; returns the plan. See the module docstring for the format."""
    if isinstance(grid, dict):
        plan = plan_grid(grid)
    else:
        plan = plan_grid(load_grid(grid), source=str(grid))
    spec = plan.spec
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)

    selected = [r.name for r in plan.runs]
    if only:
        unknown = [n for n in only if n not in selected]
        if unknown:
            raise OkdError(f"--only: no run named {', '.join(map(repr, unknown))} in the grid; runs: "
                           f"{', '.join(selected)}")
        wanted = set(only)
        # add what the selected runs need: the run they duplicate, the run their student comes from
        changed = True
        while changed:
            changed = False
            for r in plan.runs:
                if r.name in wanted:
                    for dep in (r.same_as, r.student_from):
                        if dep and dep not in wanted:
                            wanted.add(dep)
                            changed = True
        added = sorted(wanted - set(only))
        if added and not dry_run:
            log(f"--only: also running {', '.join(added)} (needed by the selected runs)")
        selected = [r.name for r in plan.runs if r.name in wanted]

    if not report_only:
        for r in plan.runs:
            if r.name in selected and not r.same_as:
                check_run_config(r)
    if dry_run:
        print(describe_plan(plan))
        return plan

    t_start = time.perf_counter()
    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.source and Path(plan.source).resolve() != (plan.out / "grid.yaml").resolve():
        shutil.copyfile(plan.source, plan.out / "grid.yaml")  # what produced this directory
    if not report_only:
        ensure_student_inits(plan, log)
        todo = [r for r in plan.runs if r.name in selected]
        for i, r in enumerate(todo, start=1):
            head = f"train {i}/{len(todo)} {r.name}"
            if r.same_as:
                log(f"{head}: same config as {r.same_as}, reusing it")
                continue
            status = run_status(r)
            if status == "complete":
                log(f"{head}: complete, skipped")
                continue
            what = "resuming " + status.split("(")[1].rstrip(")") if status.startswith("partial") else "starting"
            log(f"{head}: {what}: method {r.cfg.method.name}, {r.cfg.train.max_steps} steps × batch "
                f"{r.cfg.train.batch_size}{f', student from {r.student_from}' if r.student_from else ''} "
                f"[grid elapsed {_fmt_s(time.perf_counter() - t_start)}]")
            t0 = time.perf_counter()
            train_run(r, isolate=spec.isolate, threads=spec.threads, progress=progress)
            if not spec.keep_checkpoints:
                shutil.rmtree(r.dir / "checkpoints", ignore_errors=True)  # optimizer states: GBs per run
            s = json.loads((r.dir / "summary.json").read_text())
            log(f"{head}: done in {_fmt_s(time.perf_counter() - t0)} (training {s.get('train_s', s['wall_clock_s']):.0f} s, "
                f"{s['tokens_per_s']:.0f} tokens/s, valid CE {s['final_metrics'].get('valid_loss', float('nan')):.3f})")

        if spec.eval is not None:
            xruns = exposure_runs(plan)
            models: list[tuple[str, str, bool]] = []
            for ref in spec.eval.references:
                models.append((ref, plan.teacher if ref == "teacher" else plan.student_init, False))
            seen: set[str] = set()
            for r in plan.runs:
                t = plan.trained(r)
                if r.name not in selected or t.name in seen:
                    continue
                seen.add(t.name)
                models.append((t.name, str(t.dir / "student"),
                               t.name in xruns or any(x.same_as == t.name and x.name in xruns for x in plan.runs)
                               or r.name in xruns))
            for i, (label, model, exposure) in enumerate(models, start=1):
                head = f"eval {i}/{len(models)} {label}"
                if not _eval_current(plan.out / "eval" / f"{label}.json", eval_settings(plan, False)) or \
                        (exposure and not _eval_current(plan.out / "eval" / f"{label}.exposure.json",
                                                        eval_settings(plan, True))):
                    log(f"{head}: evaluating [grid elapsed {_fmt_s(time.perf_counter() - t_start)}]")
                    done = evaluate_model(plan, label, model, exposure=exposure, log=log)
                    log(f"{head}: {'; '.join(done)}")
                else:
                    log(f"{head}: evaluated already, skipped")

    paths = write_report(plan)
    log(f"report: {paths['report']} (+ results.csv, results.json, {len(paths['plots'])} plots) "
        f"[grid elapsed {_fmt_s(time.perf_counter() - t_start)}]")
    return plan


# ----------------------------------------------------------------------------- results and report

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def _avg_over_sets(datasets: dict) -> dict | None:
    """Mean over the eval sets of the mean ROUGE-L; its std over seeds from the per-seed averages."""
    if not datasets:
        return None
    means = [d["rougeL"]["mean"] for d in datasets.values()]
    per_seed = [d["rougeL"].get("per_seed") or [] for d in datasets.values()]
    n = min(len(p) for p in per_seed)
    seed_avgs = [statistics.fmean(p[k] for p in per_seed) for k in range(n)]
    return {"mean": statistics.fmean(means), "std": statistics.stdev(seed_avgs) if n > 1 else None,
            "per_seed": seed_avgs}


def collect_results(plan: Plan) -> list[dict]:
    """One row per reference model and per run (runs not trained yet are left out)."""
    rows: list[dict] = []
    eval_dir = plan.out / "eval"
    ev = plan.spec.eval

    def eval_part(label: str) -> dict:
        part: dict = {}
        if ev is None:
            return part
        res = _read_json(eval_dir / f"{label}.json")
        if res and res.get("compare_settings") == eval_settings(plan, False):
            part["rougeL"] = {n: d["rougeL"] for n, d in res["datasets"].items()}
            part["rougeL_avg"] = _avg_over_sets(res["datasets"])
            part["gen_tokens_per_s"] = (res.get("generation") or {}).get("tokens_per_s")
        xres = _read_json(eval_dir / f"{label}.exposure.json")
        if ev.exposure is not None and xres and xres.get("compare_settings") == eval_settings(plan, True):
            d = next(iter(xres["datasets"].values()))
            ex, tf = d.get("exposure_bias") or {}, (d.get("teacher_forced") or {}).get("overall") or {}
            part["exposure"] = {"at_l": ex.get("at_l"), "length": ex.get("length"), "curve": ex.get("curve"),
                                "prompts": d.get("examples"), "samples": ex.get("samples"),
                                "top1_agreement": tf.get("top1_agreement"), "kl": tf.get("kl")}
        return part

    if ev is not None:
        for ref in ev.references:
            row = {"name": ref, "kind": "reference", "method": "-", "model": plan.teacher if ref == "teacher"
                   else plan.student_init}
            row.update(eval_part(ref))
            rows.append(row)
    for r in plan.runs:
        t = plan.trained(r)
        summary = _read_json(t.dir / "summary.json")
        if summary is None:
            continue
        metrics = _read_metrics(t.dir / "metrics.jsonl")
        steps = summary.get("steps") or 0
        elapsed = [m["elapsed_s"] for m in metrics if "elapsed_s" in m]
        deltas = [b - a for a, b in zip(elapsed, elapsed[1:])]  # step 2 onwards: no warm-up step
        row = {"name": r.name, "kind": "sweep" if r.sweep else "run", "sweep": r.sweep, "sweep_key": None,
               "sweep_value": r.sweep_value, "same_as": r.same_as, "method": r.cfg.method.name,
               "divergence": r.cfg.method.resolved_divergence, "teacher_mode": r.cfg.method.resolved_teacher,
               "overrides": r.overrides, "student_from": r.student_from, "model": str(t.dir / "student"),
               # train_s excludes in-loop validation and checkpoint saves (runs from before it existed: wall clock)
               "steps": steps, "train_s": summary.get("train_s", summary.get("wall_clock_s")),
               "s_per_step": summary.get("train_s", summary["wall_clock_s"]) / steps if steps else None,
               # robust to load spikes on a shared machine (and to validation/checkpoint steps)
               "median_s_per_step": statistics.median(deltas) if deltas else None,
               "tokens_per_s": summary.get("tokens_per_s"), "generated_tokens": summary.get("generated_tokens"),
               "peak_memory_mb": summary.get("peak_memory_mb"), "device": summary.get("device"),
               "valid_loss": (summary.get("final_metrics") or {}).get("valid_loss"),
               "curve": [{k: m[k] for k in ("step", "valid_loss", "valid_rougeL", "loss", "elapsed_s") if k in m}
                         for m in metrics]}
        if r.sweep:
            sw = next(s for s in plan.spec.sweeps if s.name == r.sweep)
            row["sweep_key"] = sw.key
        row.update(eval_part(t.name))
        rows.append(row)
    return rows


def _ms(r: dict | None) -> str:
    if not r:
        return "n/a"
    return f"{r['mean']:.2f} ± {r['std']:.2f}" if r.get("std") is not None else f"{r['mean']:.2f}"


def _num(v, fmt: str = "{:.0f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _table(plan: Plan, rows: list[dict], sets: list[str], *, sweep_key: str | None = None) -> str:
    from okd.eval.report import markdown_table

    xl = plan.spec.eval.exposure.length if plan.spec.eval and plan.spec.eval.exposure else None
    headers = ["method"] + ([sweep_key] if sweep_key else []) + ["train time (s)", "s / step", "median s / step"]
    headers += [f"ROUGE-L {s}" for s in sets] + (["ROUGE-L avg"] if len(sets) > 1 else [])
    if xl:
        headers.append(f"ExAccErr@{xl} (%)")
    headers += ["train tokens/s", "peak mem (MB)", "valid CE"]
    out = []
    for row in rows:
        name = row["name"] + (f" (= {row['same_as']})" if row.get("same_as") else "") \
            + (f" (from {row['student_from']})" if row.get("student_from") else "")
        if row["kind"] == "reference":
            name = {"teacher": "teacher (reference)", "student_init": "student init (untrained)"}.get(name, name)
        line = [name] + ([format_value(row.get("sweep_value"))] if sweep_key else [])
        line += [_num(row.get("train_s")), _num(row.get("s_per_step"), "{:.2f}"),
                 _num(row.get("median_s_per_step"), "{:.2f}")]
        line += [_ms((row.get("rougeL") or {}).get(s)) for s in sets]
        if len(sets) > 1:
            line.append(_ms(row.get("rougeL_avg")))
        if xl:
            ex = row.get("exposure") or {}
            line.append(_num(ex.get("at_l"), "{:.1f}") if ex else "-")
        line += [_num(row.get("tokens_per_s")), _num(row.get("peak_memory_mb")), _num(row.get("valid_loss"), "{:.3f}")]
        out.append(line)
    return markdown_table(headers, out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_curves(rows: list[dict], path: Path) -> Path | None:
    """Validation CE (and ROUGE-L when logged) against training step, one line per run."""
    runs = [r for r in rows if r["kind"] != "reference" and not r.get("same_as")
            and any("valid_loss" in c for c in r.get("curve") or [])]
    if not runs:
        return None
    with_rouge = any("valid_rougeL" in c for r in runs for c in r["curve"])
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if with_rouge else 1, figsize=(13 if with_rouge else 8, 5), squeeze=False)
    colors = _colors(len(runs))
    panels = [("valid_loss", "validation CE (nats / response token)")]
    if with_rouge:
        panels.append(("valid_rougeL", "validation ROUGE-L (×100, one sample)"))
    by_name = {r["name"]: r for r in rows}

    def offset(r: dict) -> int:  # a run that starts from another run's student continues its steps
        parent = by_name.get(r.get("student_from") or "")
        return (parent.get("steps") or 0) + offset(parent) if parent else 0

    shifted = False
    for ax, (key, ylabel) in zip(axes[0], panels):
        for color, r in zip(colors, runs):
            off = offset(r)
            shifted = shifted or off > 0
            pts = [(c["step"] + off, c[key]) for c in r["curve"] if key in c]
            parent = by_name.get(r.get("student_from") or "")
            start = [(c["step"] + offset(parent), c[key]) for c in (parent or {}).get("curve", []) if key in c][-1:]
            pts = start + pts  # a continued run starts where its parent ended
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=color,
                        label=r["name"] + (f" (after {r['student_from']})" if off else ""),
                        ls="--" if r["kind"] == "sweep" else "-")
        ax.set_xlabel("training step (optimizer updates" + (", counting the parent run's" if shifted else "") + ")")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small", ncol=2 if len(runs) > 8 else 1, title="run")
    fig.suptitle("Validation during training (student)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_exposure_curves(rows: list[dict], path: Path) -> Path | None:
    curves = {r["name"]: r["exposure"] for r in rows if (r.get("exposure") or {}).get("curve")
              and not r.get("same_as")}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, ex) in zip(_colors(len(curves)), curves.items()):
        xs = [i for i, v in enumerate(ex["curve"], start=1) if v is not None]
        ax.plot(xs, [ex["curve"][i - 1] for i in xs], color=color, label=label)
    length = next(iter(curves.values())).get("length")
    if length:
        ax.axvline(length, color="grey", ls=":", lw=1)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("generation length l (tokens)")
    ax.set_ylabel("ExAccErr(l) (%)")
    ax.set_title("Exposure bias: excess accumulated error, teacher as oracle")
    ax.legend(fontsize="small", title="run")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_time(rows: list[dict], path: Path) -> Path | None:
    runs = [r for r in rows if r["kind"] != "reference" and not r.get("same_as") and r.get("train_s")]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(runs) + 1.8))
    names = [r["name"] for r in runs][::-1]
    colors = ["tab:red" if r["teacher_mode"] == "online" else "tab:blue" if r.get("generated_tokens")
              else "tab:gray" for r in runs][::-1]
    for ax, key, xlabel in ((axes[0], "train_s", "training wall-clock (s)"),
                            (axes[1], "median_s_per_step", "median time per optimizer step (s / step)")):
        vals = [r[key] or 0.0 for r in runs][::-1]
        ax.barh(names, vals, color=colors)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3g}" if v < 100 else f" {v:.0f}", va="center", fontsize="small")
        ax.margins(x=0.15)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color="tab:red", label="online teacher (OKD)"),
                        Patch(color="tab:blue", label="generates during training"),
                        Patch(color="tab:gray", label="ground-truth data only")],
               fontsize="small", loc="lower center", ncol=3, frameon=False)
    fig.suptitle("Training cost per run (training loop only; model loading and evaluation excluded)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rouge(rows: list[dict], sets: list[str], path: Path) -> Path | None:
    rows = [r for r in rows if r.get("rougeL") and not r.get("same_as")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.55 * len(rows) * len(sets) + 2)), 4.8))
    width = 0.8 / max(len(sets), 1)
    for j, (color, s) in enumerate(zip(_colors(len(sets)), sets)):
        means = [(r["rougeL"].get(s) or {}).get("mean", 0.0) for r in rows]
        stds = [(r["rougeL"].get(s) or {}).get("std") or 0.0 for r in rows]
        ax.bar([i + (j - (len(sets) - 1) / 2) * width for i in range(len(rows))], means, width, yerr=stds,
               capsize=2, color=color, label=s)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("ROUGE-L (×100), mean ± std over seeds")
    ax.set_xlabel("model")
    ax.legend(title="eval set", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("ROUGE-L of sampled answers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweeps(plan: Plan, rows: list[dict], path: Path) -> Path | None:
    sweeps = [s for s in plan.spec.sweeps if any(r.get("sweep") == s.name and r.get("rougeL_avg") for r in rows)]
    if not sweeps:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 4), squeeze=False)
    by_name = {r["name"]: r for r in rows}
    for ax, sw in zip(axes[0], sweeps):
        pts = [(r["sweep_value"], r) for r in rows if r.get("sweep") == sw.name and r.get("rougeL_avg")
               and not r.get("same_as")]
        base = by_name.get(sw.base_run)
        if base and base.get("rougeL_avg"):
            pts.append((getattr_dotted(plan.run(sw.base_run).cfg, sw.key), base))
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in pts):
            pts.sort(key=lambda p: p[0])
        means = [r["rougeL_avg"]["mean"] for _, r in pts]
        stds = [r["rougeL_avg"].get("std") or 0.0 for _, r in pts]
        ax.errorbar(range(len(pts)), means, yerr=stds, marker="o", capsize=3, color="tab:blue", label=sw.name)
        for i, (_, r) in enumerate(pts):
            if r is base:
                ax.plot([i], [means[i]], marker="*", ms=14, color="tab:red", ls="none",
                        label=f"{sw.base_run} (its default)")
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels([format_value(v) + (" (all)" if v is None and sw.key == "online.layers" else "")
                            for v, _ in pts])
        ax.set_xlabel(sw.key)
        ax.set_ylabel("ROUGE-L avg over eval sets (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Ablations (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(plan: Plan) -> dict:
    """report.md, results.csv, results.json and the PNG plots in the grid's output_dir."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_results(plan)
    ev = plan.spec.eval
    sets: list[str] = []
    for r in rows:
        for s in r.get("rougeL") or {}:
            if s not in sets:
                sets.append(s)

    plots = {}
    for key, fn in (("curves", lambda p: plot_curves(rows, p)), ("exposure", lambda p: plot_exposure_curves(rows, p)),
                    ("time", lambda p: plot_time(rows, p)), ("rouge", lambda p: plot_rouge(rows, sets, p)),
                    ("sweeps", lambda p: plot_sweeps(plan, rows, p))):
        name = {"curves": "valid_curves.png", "exposure": "exposure.png", "time": "time.png",
                "rouge": "rouge.png", "sweeps": "sweeps.png"}[key]
        p = fn(out / name)
        if p is not None:
            plots[key] = p.name

    # results.json / results.csv
    hw = hardware()
    (out / "results.json").write_text(json.dumps(
        {"grid": plan.spec.model_dump(mode="json", by_alias=True), "hardware": hw, "rows": rows},
        indent=1, ensure_ascii=False, default=str) + "\n")
    fields = ["name", "kind", "method", "divergence", "teacher_mode", "sweep", "sweep_key", "sweep_value", "same_as",
              "student_from", "steps", "train_s", "s_per_step", "median_s_per_step", "tokens_per_s", "generated_tokens",
              "peak_memory_mb", "valid_loss"]
    for s in sets:
        fields += [f"rougeL_{s}_mean", f"rougeL_{s}_std"]
    fields += ["rougeL_avg_mean", "rougeL_avg_std", "exacc_err", "exacc_err_length", "top1_agreement", "kl"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            flat = {k: r.get(k) for k in fields if k in r}
            if isinstance(flat.get("sweep_value"), (list, dict)):
                flat["sweep_value"] = json.dumps(flat["sweep_value"])
            for s in sets:
                d = (r.get("rougeL") or {}).get(s) or {}
                flat[f"rougeL_{s}_mean"], flat[f"rougeL_{s}_std"] = d.get("mean"), d.get("std")
            a = r.get("rougeL_avg") or {}
            flat["rougeL_avg_mean"], flat["rougeL_avg_std"] = a.get("mean"), a.get("std")
            ex = r.get("exposure") or {}
            flat.update(exacc_err=ex.get("at_l"), exacc_err_length=ex.get("length"),
                        top1_agreement=ex.get("top1_agreement"), kl=ex.get("kl"))
            w.writerow(flat)

    # report.md
    main_rows = [r for r in rows if r["kind"] != "sweep"]
    base_cfg = plan.runs[0].cfg
    tc, dc = base_cfg.train, base_cfg.data
    lines = [f"# {plan.spec.title or 'okd compare: ' + out.name}", ""]
    lines.append(f"Teacher `{plan.teacher}`; student `{plan.student_init}`; training data `{dc.train}` "
                 f"(template {dc.template}, max length {dc.max_length}).")
    lines.append(f"Budget per run: {tc.max_steps} steps × batch {tc.batch_size} × grad accum {tc.grad_accum}, "
                 f"lr {tc.lr:g}, seed {tc.seed} (unless a run overrides it).")
    if ev is not None:
        s = eval_settings(plan, False)
        decoding = "greedy" if s["greedy"] else (f"{s['seeds']} sampled answers per prompt "
                                                 f"(seeds 0..{s['seeds'] - 1}, temperature 1, top-p 1)")
        lines.append(f"Evaluation: {', '.join(s['data'])} ({s['split']} split, first {s['limit'] or 'all'} prompts), "
                     f"{decoding}, at most {s['max_new_tokens']} new tokens; ROUGE-L ×100, mean ± std over seeds "
                     "(the avg column: mean over sets, std over per-seed averages).")
        if ev.exposure is not None:
            xs = eval_settings(plan, True)
            lines.append(f"ExAccErr@{xs['length']}: exposure bias with `{xs['teacher']}` as oracle on the first "
                         f"{xs['prompts']} prompts of {xs['data'][0]}, {xs['samples']} sampled prefixes per prompt "
                         f"and model, curve to l = {xs['max_len']} (computed for: "
                         f"{', '.join(sorted(exposure_runs(plan)))}; '-' = not computed).")
    lines.append(f"Hardware: {hw['processor']}, {hw['cpu_count']} CPUs, torch {hw['torch']}, "
                 f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}. Train time: the training loop's wall-clock "
                 "(model loading excluded); peak mem: " + ("CUDA max allocated" if hw["gpu"] else
                                                          "the training process's max RSS") + ".")
    lines += ["", "## Methods", "", _table(plan, main_rows, sets), ""]
    for sw in plan.spec.sweeps:
        srows = [r for r in rows if r.get("sweep") == sw.name]
        if not srows:
            continue
        base = [dict(r, sweep_value=_get_dotted(r["overrides"], sw.key) if sw.key in r["overrides"]
                     else getattr_dotted(plan.run(sw.base_run).cfg, sw.key), kind="run")
                for r in rows if r["name"] == sw.base_run]
        lines += [f"## Ablation: {sw.key} ({sw.name}, on {sw.base_run})", "",
                  _table(plan, base + srows, sets, sweep_key=sw.key), ""]
    titles = {"curves": "Validation during training", "rouge": "ROUGE-L", "exposure": "Exposure bias",
              "time": "Training cost", "sweeps": "Ablations"}
    if plots:
        lines += ["## Plots", ""]
        for key, name in plots.items():
            lines += [f"![{titles[key]}]({name})", ""]
    cmd = f"okd compare -c {plan.source}" if plan.source else "okd compare -c GRID.yaml"
    lines += [f"Regenerate: `{cmd}` (finished runs and evaluations are reused).", ""]
    (out / "report.md").write_text("\n".join(lines))
    return {"report": out / "report.md", "plots": list(plots.values()), "rows": rows}


def getattr_dotted(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for k in dotted.split("."):
        node = getattr(node, k, None)
    return node
