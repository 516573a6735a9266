"""The grid report's figures (PNG, matplotlib Agg), each from collect_results' rows; None when there
is nothing to draw. The exposure-curve figure is okd.eval.report.plot_exposure's, shared with okd eval."""

from __future__ import annotations

from pathlib import Path

from okd.compare.grid import Plan, format_value
from okd.config import get_dotted
from okd.eval.report import colors, plot_exposure, pyplot


def _save(fig, path: Path, **layout) -> Path:
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_curves(rows: list[dict], path: Path) -> Path | None:
    """Validation CE (and ROUGE-L when logged) against training step, one line per run."""
    runs = [r for r in rows if r["kind"] != "reference" and not r.get("same_as")
            and any("valid_loss" in c for c in r.get("curve") or [])]
    if not runs:
        return None
    with_rouge = any("valid_rougeL" in c for r in runs for c in r["curve"])
    fig, axes = pyplot().subplots(1, 2 if with_rouge else 1, figsize=(13 if with_rouge else 8, 5), squeeze=False)
    panels = [("valid_loss", "validation CE (nats / response token)")]
    if with_rouge:
        panels.append(("valid_rougeL", "validation ROUGE-L (×100, one sample)"))
    by_name = {r["name"]: r for r in rows}

    def offset(r: dict) -> int:  # a run that starts from another run's student continues its steps
        parent = by_name.get(r.get("student_from") or "")
        return (parent.get("steps") or 0) + offset(parent) if parent else 0

    shifted = False
    for ax, (key, ylabel) in zip(axes[0], panels):
        for color, r in zip(colors(len(runs)), runs):
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
    return _save(fig, path)


def plot_exposure_curves(rows: list[dict], path: Path) -> Path | None:
    """ExAccErr(l) of each run (and reference) evaluated for exposure bias."""
    curves = {r["name"]: r["exposure"] for r in rows if (r.get("exposure") or {}).get("curve")
              and not r.get("same_as")}
    return plot_exposure(curves, path, legend_title="run") if curves else None


def plot_time(rows: list[dict], path: Path) -> Path | None:
    """Training wall-clock and median time per step, one bar per run, coloured by teacher mode."""
    runs = [r for r in rows if r["kind"] != "reference" and not r.get("same_as") and r.get("train_s")]
    if not runs:
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 0.35 * len(runs) + 1.8))
    names = [r["name"] for r in runs][::-1]
    bar_colors = ["tab:red" if r["teacher_mode"] == "online" else "tab:blue" if r.get("generated_tokens")
                  else "tab:gray" for r in runs][::-1]
    for ax, key, xlabel in ((axes[0], "train_s", "training wall-clock (s)"),
                            (axes[1], "median_s_per_step", "median time per optimizer step (s / step)")):
        vals = [r[key] or 0.0 for r in runs][::-1]
        ax.barh(names, vals, color=bar_colors)
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
    return _save(fig, path, rect=(0, 0.06, 1, 1))


def plot_rouge(rows: list[dict], sets: list[str], path: Path) -> Path | None:
    """ROUGE-L mean ± std over seeds, grouped bars: models × eval sets."""
    rows = [r for r in rows if r.get("rougeL") and not r.get("same_as")]
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(min(16, max(7, 0.55 * len(rows) * len(sets) + 2)), 4.8))
    width = 0.8 / max(len(sets), 1)
    for j, (color, s) in enumerate(zip(colors(len(sets)), sets)):
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
    return _save(fig, path)


def plot_sweeps(plan: Plan, rows: list[dict], path: Path) -> Path | None:
    """One panel per sweep: ROUGE-L avg against the swept value, the base run starred."""
    sweeps = [s for s in plan.spec.sweeps if any(r.get("sweep") == s.name and r.get("rougeL_avg") for r in rows)]
    if not sweeps:
        return None
    fig, axes = pyplot().subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 4), squeeze=False)
    by_name = {r["name"]: r for r in rows}
    for ax, sw in zip(axes[0], sweeps):
        pts = [(r["sweep_value"], r) for r in rows if r.get("sweep") == sw.name and r.get("rougeL_avg")
               and not r.get("same_as")]
        base = by_name.get(sw.base_run)
        if base and base.get("rougeL_avg"):
            pts.append((get_dotted(plan.run(sw.base_run).cfg, sw.key), base))
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
    return _save(fig, path)


DYNAMICS = (("valid_kl_base_teacher", "valid_kl_online_teacher", "KL(teacher ‖ student) on valid (nats/token)"),
            ("valid_ce_base_teacher", "valid_ce_online_teacher", "teacher CE on the references (nats/token)"))


def plot_dynamics(rows: list[dict], path: Path) -> Path | None:
    """Online-teacher runs: KL to the student and CE on the data, with the frozen base teacher (dashed) and
    the adapted teacher (solid), and the size of the LoRA update, against training step."""
    runs = [r for r in rows if r["kind"] != "reference" and not r.get("same_as")
            and any("valid_kl_online_teacher" in c for c in r.get("curve") or [])]
    if not runs:
        return None
    fig, axes = pyplot().subplots(1, 3, figsize=(16, 4.5))
    for color, r in zip(colors(len(runs)), runs):
        pts = [c for c in r["curve"] if "valid_kl_online_teacher" in c]
        steps = [c["step"] for c in pts]
        for ax, (base, online, label) in zip(axes, DYNAMICS):
            ax.plot(steps, [c[base] for c in pts], ls="--", color=color, alpha=0.7)
            ax.plot(steps, [c[online] for c in pts], marker="o", ms=3, color=color, label=r["name"])
            ax.set_ylabel(label)
        axes[2].plot(steps, [c.get("online_update_norm", 0.0) for c in pts], marker="o", ms=3, color=color,
                     label=r["name"])
    axes[2].set_ylabel("‖ΔW‖ of the online module (Frobenius)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", title="solid: adapted teacher p′; dashed: base teacher p")
    fig.suptitle("Online-module dynamics on data.valid")
    return _save(fig, path)
