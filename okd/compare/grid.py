"""The grid file's schema and its plan: every run's resolved config, in dependency order.

`plan_grid(tree)` validates a grid tree (unknown keys are errors naming them) and resolves it into a
`Plan`: one `Run` per run and sweep value, each with a full `okd.config.Config`, the student
initialisations to build (okd.compare.settings derives the evaluation settings from it).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from okd.compare.caches import TeacherCachePlan, assign_teacher_cache
from okd.config import Config, build_config, expand_path, read_yaml_mapping, set_dotted
from okd.errors import OkdError
from okd.eval.config import AtLeastOne, EvalConfig, ExposureConfig, Template, describe_errors
from okd.models.teacher_cache import DEFAULT_TOP_K

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
REFERENCE_LABELS = {"teacher": "teacher", "teacher_base": "teacher_base", "student_init": "student_init"}


# ----------------------------------------------------------------------------- the grid schema

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RunSpec(_Section):
    name: str
    overrides: dict[str, Any] = {}
    student_from: str | None = None  # start from this run's trained student (e.g. minillm from sft)
    teacher_from: str | None = None  # distil from this run's trained model (a teacher-tuning run: sft of the teacher)
    note: str | None = None
    seeds: list[int] | None = None  # training seeds (train.seed), one run each: <name>_s<seed>; default: the grid's


class SweepSpec(_Section):
    name: str  # prefix of the expanded runs: <name>_<value>
    base_run: str
    key: str  # a dotted config key, e.g. online.rank
    values: list[Any]
    labels: list[str] | None = None  # run-name suffixes instead of the formatted values
    seeds: list[int] | None = None  # training seeds of the sweep's runs (default: the grid's)

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


class ExposureSpec(ExposureConfig):
    """eval.exposure: okd eval's exposure settings (other defaults), for some runs, on one data set."""

    runs: list[str] | None = None  # default: every run
    data: str | None = None  # default: the first eval.data entry
    teacher: str | None = None  # the oracle; default base teacher.path
    prompts: AtLeastOne = 8
    samples: AtLeastOne = 2


class EvalSpec(EvalConfig):
    """eval: okd eval's settings (okd.eval.EvalConfig) with the grid's defaults, plus what to evaluate."""

    data: list[str]
    seeds: AtLeastOne = 3
    max_new_tokens: AtLeastOne = 64
    template: Template | None = None  # default: base data.template
    # teacher: the grid's teacher (the tuned one under teacher_from); teacher_base: base.teacher.path as given
    references: list[Literal["teacher", "teacher_base", "student_init"]] = []
    exposure: ExposureSpec | None = None  # type: ignore[assignment]

    @field_validator("data")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must list at least one data set")
        return v


class TeacherCacheSpec(_Section):
    """teacher_cache: one `okd teacher cache` per (teacher, data), shared by the frozen-teacher runs."""

    top_k: AtLeastOne | Literal["all"] = DEFAULT_TOP_K
    dtype: Literal["float16", "float32"] = "float16"


class GridSpec(_Section):
    output_dir: str
    base: dict[str, Any] = {}
    runs: list[RunSpec] = []
    sweeps: list[SweepSpec] = []
    seeds: list[int] | None = None  # every run once per training seed (train.seed): <name>_s<seed>
    # every run with a teacher distils from this run's trained model (a run without seeds), unless it names its own
    teacher_from: str | None = None
    eval: EvalSpec | None = None
    teacher_cache: TeacherCacheSpec | None = None  # `true`: the defaults
    intervals: list[tuple[str, str]] | None = None  # [a, b] seed groups: paired intervals of a − b (default okd − each)
    # [a, b]: a's training time to b's best validation CE against b's own, and both CEs at equal time
    time_to_quality: list[tuple[str, str]] = []
    threads: int | None = None
    isolate: bool = True  # train each run in its own process (per-run peak memory)
    keep_checkpoints: bool = True  # false: delete a run's checkpoints/ once it is complete (student/ stays)
    title: str | None = None

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _true_is_defaults(cls, v):
        return {} if v is True else None if v is False else v


# ----------------------------------------------------------------------------- the resolved plan

@dataclass
class Run:
    name: str
    cfg: Config
    overrides: dict[str, Any]
    student_from: str | None = None
    teacher_from: str | None = None
    sweep: str | None = None  # the sweep it came from
    sweep_value: Any = None
    same_as: str | None = None  # an earlier run with the same config: reused
    note: str | None = None
    group: str | None = None  # the run name before the seeds expanded it (results aggregate over a group)
    seed: int | None = None

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
    caches: list[TeacherCachePlan] = field(default_factory=list)
    teacher: str | None = None  # the teacher reference row's model (the tuned teacher under teacher_from)
    teacher_base: str | None = None  # base.teacher.path
    student_init: str | None = None  # the shared student initialisation (for the reference row)
    source: str | None = None  # the grid file

    def run(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)

    def cache_of(self, run: Run) -> TeacherCachePlan | None:
        """The grid's shared teacher cache this run trains from, if any."""
        return next((c for c in self.caches if str(c.path) == run.cfg.teacher.cache), None)

    def trained(self, run: Run) -> Run:
        """The run whose directory holds the result (itself, or the one it duplicates)."""
        return self.run(run.same_as) if run.same_as else run


def _describe(error: ValidationError, prefix: str = "grid key") -> str:
    return describe_errors(error, lambda key: f"{prefix} {key!r}",
                           "unknown key (see okd compare --help for the grid format)")


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


def load_grid(path: str | Path) -> dict:
    return read_yaml_mapping(path, "grid", "(output_dir:, base:, runs:, eval:)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(text)).name).strip("-.") or "model"


def _init_path(out: Path, init: StudentInit) -> Path:
    """Where a student initialisation is kept: its `path`, else one folder per (teacher, k, strategy)."""
    return Path(init.path) if init.path else out / "students" / f"{_slug(init.from_)}-{init.layers}l-{init.strategy}"


# ----------------------------------------------------------------------------- plan_grid, step by step

Item = tuple[RunSpec, "str | None", Any]  # a run, the sweep it came from and the sweep's value


def _validate(tree: dict, base_dir: Path | None) -> tuple[GridSpec, Path]:
    try:
        spec = GridSpec.model_validate(tree)
    except ValidationError as e:
        raise OkdError(_describe(e)) from None
    try:
        out = Path(expand_path(spec.output_dir))
    except ValueError as e:
        raise OkdError(f"grid key 'output_dir': {e}") from None
    if base_dir is not None and not out.is_absolute():
        out = base_dir / out
    if "output_dir" in spec.base:
        raise OkdError("grid key 'base.output_dir': each run trains in <output_dir>/runs/<name>; "
                       "set output_dir at the top of the grid instead")
    return spec, out


def _expand_sweeps(spec: GridSpec) -> list[Item]:
    """The runs, then each sweep's runs (one per value, on top of its base run's overrides)."""
    items: list[Item] = [(r, None, None) for r in spec.runs]
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
                          student_from=parent.student_from, teacher_from=parent.teacher_from, note=parent.note,
                          seeds=sw.seeds if sw.seeds is not None else parent.seeds)
            items.append((run, sw.name, value))
    if not items:
        raise OkdError("grid key 'runs': the grid has no runs; list at least one {name, overrides}")
    return items


def _expand_seeds(spec: GridSpec, items: list[Item]) -> list[tuple[Item, str, int | None]]:
    """Each run once per training seed (its own `seeds:`, else the grid's), named <name>_s<seed>, with
    train.seed set; a student_from names the same seed's run where its source was expanded too.
    Returns (item, group, seed) triples; runs without seeds keep their name (group = name)."""
    seeds_of = {r.name: (r.seeds if r.seeds is not None else spec.seeds) for r, _, _ in items}
    out = []
    for r, sweep, value in items:
        seeds = seeds_of[r.name]
        if not seeds:
            out.append(((r, sweep, value), r.name, None))
            continue
        if len(set(seeds)) != len(seeds):
            raise OkdError(f"run {r.name!r}: seeds {seeds} repeat a seed")
        for seed in seeds:
            deps = {key: _seeded_dependency(r, key, seed, seeds_of) for key in ("student_from", "teacher_from")}
            run = r.model_copy(update={"name": f"{r.name}_s{seed}", **deps,
                                       "overrides": {**r.overrides, "train.seed": seed}})
            out.append(((run, sweep, value), r.name, seed))
    return out


def _seeded_dependency(r: RunSpec, key: str, seed: int, seeds_of: dict) -> str | None:
    """The run that seed `seed` of `r` takes its student (or teacher) from: the same seed's run where
    that run was expanded by seeds too, else the run itself."""
    src = getattr(r, key)
    if src is None or not seeds_of.get(src):
        return src
    if seed not in seeds_of[src]:
        raise OkdError(f"run {r.name!r} (seed {seed}): {key} {src!r} has no run with seed {seed}")
    return f"{src}_s{seed}"


def _uses_teacher(r: RunSpec, base: dict) -> bool:
    """Whether the run's method has a teacher (base + overrides, before the whole config is resolved)."""
    from okd.config import MethodConfig

    tree = copy.deepcopy(base)
    try:
        for key, val in r.overrides.items():
            set_dotted(tree, key, val)
        return MethodConfig.model_validate(tree.get("method") or {}).resolved_teacher != "none"
    except (OkdError, ValidationError):
        return True  # a bad key: reported when the run is resolved


def _grid_teacher(spec: GridSpec, items: list[Item]) -> list[Item]:
    """The grid's teacher_from given to every run with a teacher that names none of its own."""
    src = spec.teacher_from
    if src is None:
        return items
    by_name = {r.name: r for r, _, _ in items}
    if src not in by_name:
        raise OkdError(f"grid key 'teacher_from': {src!r} is not a run of this grid")
    if by_name[src].seeds if by_name[src].seeds is not None else spec.seeds:
        raise OkdError(f"grid key 'teacher_from': run {src!r} is trained once per seed; give it `seeds: []` (one "
                       "teacher for every run) or set teacher_from run by run")
    return [(r.model_copy(update={"teacher_from": src}) if r.teacher_from is None and r.name != src
             and _uses_teacher(r, spec.base) else r, sweep, value) for r, sweep, value in items]


def _check_names(items: list[Item]) -> set[str]:
    """The run names, each a valid directory name, unique, not a reference label; student_from known."""
    seen: set[str] = set()
    for r, _, _ in items:
        if not NAME_RE.match(r.name):
            raise OkdError(f"run name {r.name!r}: use letters, digits and _ . = + - only (it names a directory)")
        if r.name in seen:
            raise OkdError(f"run name {r.name!r} is used twice; run names must be unique (sweeps make <name>_<value>)")
        if r.name in REFERENCE_LABELS:
            raise OkdError(f"run name {r.name!r} is reserved for the reference rows; choose another")
        seen.add(r.name)
    for r, _, _ in items:
        for key in ("student_from", "teacher_from"):
            src = getattr(r, key)
            if src is not None and src not in seen:
                seeded = sorted(n for n in seen if n.startswith(f"{src}_s"))
                raise OkdError(f"run {r.name!r}: {key} {src!r} " + (
                    f"is trained once per seed ({', '.join(seeded)}); name one of them" if seeded
                    else "is not a run of this grid"))
    return seen


def _deps(r: RunSpec) -> list[str]:
    return [d for d in (r.student_from, r.teacher_from) if d is not None]


def _dependency_order(items: list[Item]) -> list[Item]:
    """Stable: a run comes after the runs its student and teacher come from, otherwise in grid order."""
    ordered: list[Item] = []
    placed: set[str] = set()
    pending = list(items)
    while pending:  # always place the first run whose dependency is placed
        item = next((it for it in pending if all(d in placed for d in _deps(it[0]))), None)
        if item is None:
            raise OkdError("runs form a student_from/teacher_from cycle: " + ", ".join(
                f"{r.name} <- {', '.join(_deps(r))}" for r, _, _ in pending))
        ordered.append(item)
        placed.add(item[0].name)
        pending.remove(item)
    return ordered


def _pop_init(tree: dict) -> Any:
    student = tree.get("student")
    return student.pop("init", None) if isinstance(student, dict) else None


def _check_base(base: dict) -> None:
    """The base alone must be a valid config (so a typo in base: is reported once, as such)."""
    tree = copy.deepcopy(base)
    _pop_init(tree)
    try:
        build_config(tree)
    except OkdError as e:
        raise OkdError(f"grid base: {e}") from None


def _resolve_run(r: RunSpec, base: dict, out: Path, inits: dict[tuple, StudentInitPlan]) -> Config:
    """base + the run's overrides, its student (an initialisation, or another run's) and output_dir."""
    tree = copy.deepcopy(base)
    for key, val in r.overrides.items():
        if key == "output_dir" or key.startswith("output_dir."):
            raise OkdError(f"run {r.name!r}: override 'output_dir' is not allowed; runs train in "
                           "<output_dir>/runs/<name>")
        try:
            set_dotted(tree, key, val)
        except OkdError as e:
            raise OkdError(f"run {r.name!r}: {e}") from None
    init_raw = _pop_init(tree)
    if init_raw is not None:
        try:
            init = StudentInit.model_validate(init_raw)
        except ValidationError as e:
            raise OkdError(_describe(e, f"run {r.name!r}: grid key 'student.init'")) from None
        if tree["student"].get("path"):
            raise OkdError(f"run {r.name!r}: set either student.path or student.init, not both")
        ipath = _init_path(out, init)
        inits.setdefault((init.from_, init.layers, init.strategy, str(ipath)),
                         StudentInitPlan(init.from_, init.layers, init.strategy, ipath))
        tree["student"]["path"] = str(ipath)
    if r.student_from is not None:
        tree.setdefault("student", {})["path"] = str(out / "runs" / r.student_from / "student")
    if r.teacher_from is not None:
        tree.setdefault("teacher", {})["path"] = str(out / "runs" / r.teacher_from / "student")
        (tree.get("teacher") or {}).pop("gguf_file", None)
    tree["output_dir"] = str(out / "runs" / r.name)
    try:
        cfg = build_config(tree)
    except OkdError as e:
        raise OkdError(f"run {r.name!r}: {e}") from None
    if cfg.student.path is None:
        raise OkdError(f"run {r.name!r}: no student; set base.student.path or base.student.init")
    return cfg


def _identity(cfg: Config) -> dict:
    """What makes two runs the same training: the config without where it is written."""
    tree = cfg.model_dump(mode="json")
    tree.pop("output_dir")
    tree["method"].pop("seqkd_cache", None)
    return tree


def _student_init_path(spec: GridSpec, out: Path) -> str | None:
    """The shared student initialisation (the student_init reference row)."""
    base_init = _pop_init(copy.deepcopy(spec.base))
    if base_init is None:
        return (spec.base.get("student") or {}).get("path")
    try:
        first = StudentInit.model_validate(base_init)
    except ValidationError as e:
        raise OkdError(_describe(e, "grid key 'base.student.init'")) from None
    return str(_init_path(out, first))


def _check_eval(ev: EvalSpec, names: set[str], teacher: str | None, student_init: str | None) -> None:
    if {"teacher", "teacher_base"} & set(ev.references) and not teacher:
        raise OkdError("grid key 'eval.references': 'teacher' needs base.teacher.path")
    if "student_init" in ev.references and not student_init:
        raise OkdError("grid key 'eval.references': 'student_init' needs base.student.path or base.student.init")
    if ev.exposure is not None:
        for name in ev.exposure.runs or []:
            if name not in names:
                raise OkdError(f"grid key 'eval.exposure.runs': no run named {name!r}")
        if not (ev.exposure.teacher or teacher):
            raise OkdError("grid key 'eval.exposure.teacher': exposure bias needs a teacher (or base.teacher.path)")


def plan_grid(tree: dict, *, source: str | None = None, base_dir: Path | None = None) -> Plan:
    """Validate a grid tree and resolve every run's config; raises OkdError naming the bad key."""
    spec, out = _validate(tree, base_dir)
    seeded = _expand_seeds(spec, _grid_teacher(spec, _expand_sweeps(spec)))
    groups = {item[0].name: (group, seed) for item, group, seed in seeded}
    items = [item for item, _, _ in seeded]
    names = _check_names(items) | {group for group, _ in groups.values()}
    _check_base(spec.base)
    inits: dict[tuple, StudentInitPlan] = {}
    runs: list[Run] = []
    identities: dict[str, dict] = {}
    caches: dict[str, TeacherCachePlan] = {}
    for r, sweep, value in _dependency_order(items):
        cfg = assign_teacher_cache(r.name, _resolve_run(r, spec.base, out, inits), spec.teacher_cache, out, caches)
        run = Run(name=r.name, cfg=cfg, overrides=dict(r.overrides), student_from=r.student_from,
                  teacher_from=r.teacher_from, sweep=sweep,
                  sweep_value=value, note=r.note, group=groups[r.name][0], seed=groups[r.name][1])
        identity = _identity(cfg)
        run.same_as = next((other for other, t in identities.items() if t == identity), None)
        if run.same_as is None:
            identities[r.name] = identity
        runs.append(run)
    student_init = _student_init_path(spec, out)
    teacher_base = (spec.base.get("teacher") or {}).get("path")
    teacher = str(out / "runs" / spec.teacher_from / "student") if spec.teacher_from else teacher_base
    if spec.eval is not None:
        _check_eval(spec.eval, names, teacher, student_init)
    refs = set(spec.eval.references) if spec.eval is not None else set()
    for key, pairs in (("intervals", spec.intervals or []), ("time_to_quality", spec.time_to_quality)):
        for a, b in pairs:
            for name in (a, b):
                if name not in names | (refs if key == "intervals" else set()):
                    raise OkdError(f"grid key {key!r}: no run named {name!r}")
    return Plan(spec=spec, out=out, runs=runs, inits=list(inits.values()), caches=list(caches.values()),
                teacher=teacher, teacher_base=teacher_base, student_init=student_init, source=source)
