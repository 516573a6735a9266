"""Learning curves of run directories (`okd plot RUN... -o FILE.png`, the demo's learning_curves.png).

Reads each run's metrics.jsonl (and config.yaml for its label) and draws, one line per run:
training loss and validation CE against training time (`train_s`, the loop without its validations and
saves; `elapsed_s` for runs that predate it) or against the step, and, where an online-teacher run logged
them, the module dynamics of DESIGN §6: KL from the base/online teacher to the student, the teacher's CE
on the references, and the norm of the LoRA update. Only files are read: no model, no okd.train.
"""

from __future__ import annotations

import json
from pathlib import Path

from okd.errors import OkdError
from okd.eval.report import colors, pyplot

DYNAMICS = [("valid_kl_base_teacher", "valid_kl_online_teacher", "KL(teacher ‖ student) on valid (nats/token)"),
            ("valid_ce_base_teacher", "valid_ce_online_teacher", "teacher CE on the references (nats/token)"),
            (None, "online_update_norm", "‖ΔW‖ of the online module (Frobenius)")]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl (lines that do not parse, e.g. one cut by a kill, skipped;
    none for a run that has not logged yet). The one reader of the file (compare, demo, plots)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    return records


def run_label(run_dir: Path) -> str:
    """The directory name, with the method when config.yaml names another one (runs/a -> 'a (okd)')."""
    import yaml

    try:
        method = ((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("method") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        method = None
    return run_dir.name if not method or method == run_dir.name else f"{run_dir.name} ({method})"


def resolve_run(path: str | Path) -> Path:
    """A run directory (holding metrics.jsonl) from the directory itself or its student/; else OkdError."""
    p = Path(path)
    if p.name == "student" and (p.parent / "metrics.jsonl").is_file():
        p = p.parent
    if not p.is_dir():
        raise OkdError(f"run {str(p)!r} not found; give a run directory (the output_dir of okd train)")
    if not (p / "metrics.jsonl").is_file():
        raise OkdError(f"{str(p)!r} has no metrics.jsonl; give a run directory (the output_dir of okd train)")
    return p


def _x(rec: dict, x: str) -> float | None:
    if x == "step":
        return rec["step"]
    return rec.get("train_s", rec.get("elapsed_s"))


def _line(ax, recs: list[dict], key: str, x: str, **style) -> bool:
    pts = [(_x(r, x), r[key]) for r in recs if isinstance(r.get(key), (int, float)) and _x(r, x) is not None]
    if not pts:
        return False
    xs, ys = zip(*pts)
    ax.plot(xs, ys, **style)
    return True


def _panels(runs: dict[str, list[dict]]) -> list[tuple[str | None, str, str]]:
    """(base key, key, y label) of each panel that some run has data for."""
    panels = [(None, "loss", "training loss (the method's objective)"),
              (None, "valid_loss", "validation CE (nats / response token)")]
    have = {k for recs in runs.values() for r in recs for k in r}
    return [p for p in panels if p[1] in have] + [p for p in DYNAMICS if p[1] in have]


def plot_runs(run_dirs: list[str | Path], path: str | Path, *, labels: list[str] | None = None, x: str = "time",
              title: str | None = None) -> Path:
    """One PNG of the runs' curves (see the module doc); returns its path. x: 'time' or 'step'."""
    if x not in ("time", "step"):
        raise OkdError(f"x must be 'time' or 'step', got {x!r}")
    dirs = [resolve_run(d) for d in run_dirs]
    if labels is not None and len(labels) != len(dirs):
        raise OkdError(f"{len(labels)} labels for {len(dirs)} runs")
    names = labels or [run_label(d) for d in dirs]
    runs = {name: read_metrics(d) for name, d in zip(names, dirs)}
    panels = _panels(runs)
    if not panels:
        raise OkdError("no loss or validation values in the runs' metrics.jsonl: nothing to plot")
    plt = pyplot()
    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, (base, key, ylabel) in zip(axes.flat, panels):
        for color, (name, recs) in zip(colors(len(runs)), runs.items()):
            marker = "o" if key != "loss" else None
            if _line(ax, recs, key, x, color=color, label=name, marker=marker, ms=3, lw=1.2 if key == "loss" else 1.5):
                if base:
                    _line(ax, recs, base, x, color=color, ls="--", alpha=0.7)
        ax.set_xlabel("training time (s, without validation)" if x == "time" else "training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if base:
            ax.set_title("solid: adapted teacher p′; dashed: base p", fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small", title="run")
    fig.suptitle(title or "Learning curves")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
