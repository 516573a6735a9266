"""Markdown tables and matplotlib figures for eval results and the §IV-A analysis."""

from __future__ import annotations

from pathlib import Path

from okd.eval.teacher_forced import BUCKETS


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_mean_std(r: dict | None, digits: int = 2) -> str:
    """A {mean, std} score as "12.34 ± 0.56" ("12.34" without a std, "n/a" without a score)."""
    if not r:
        return "n/a"
    return (f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}" if r.get("std") is not None
            else f"{r['mean']:.{digits}f}")


def eval_table(results: dict) -> str:
    """One row per dataset: ROUGE-L mean ± std over seeds, plus the teacher analyses when present."""
    datasets = results["datasets"]
    with_teacher = any("exposure_bias" in d or "teacher_forced" in d for d in datasets.values())
    headers = ["dataset", "examples", "ROUGE-L", "seeds"]
    if with_teacher:
        headers += ["ExAccErr (%)", "top-1 agree (%)", "KL (nats/token)"]
    rows = []
    for name, d in datasets.items():
        r = d["rougeL"]
        greedy = (results.get("settings") or {}).get("greedy")
        row = [name, d["examples"], format_mean_std(r), "greedy" if greedy else r.get("runs", 1)]
        if with_teacher:
            ex, tf = d.get("exposure_bias") or {}, (d.get("teacher_forced") or {}).get("overall") or {}
            agree = tf.get("top1_agreement")
            row += [ex.get("at_l"), None if agree is None else 100 * agree, tf.get("kl")]
        rows.append(row)
    table = markdown_table(headers, rows)
    if with_teacher:
        ls = {d["exposure_bias"]["length"] for d in datasets.values() if "exposure_bias" in d}
        if ls:
            table += f"\n\nExAccErr at l = {', '.join(map(str, sorted(ls)))} tokens."
    return table


def analysis_table(stats: dict[str, dict]) -> str:
    """stats: label -> teacher_forced_stats result. Rows per student, columns per bucket/metric."""
    headers = ["student"]
    for metric in ("KL", "top-1 (%)", "std_S"):
        headers += [f"{metric} {b}" for b in ("all",) + BUCKETS]
    rows = []
    for label, s in stats.items():
        parts = [s["overall"]] + [s["buckets"][b] for b in BUCKETS]
        row = [label]
        row += [p["kl"] for p in parts]
        row += [None if p["top1_agreement"] is None else 100 * p["top1_agreement"] for p in parts]
        row += [p["student_logit_std"] for p in parts]
        rows.append(row)
    first = next(iter(stats.values()), None)
    table = markdown_table(headers, rows)
    if first:
        lo, hi = first["thresholds"]
        table += (f"\n\nTeacher logit std: {first['overall']['teacher_logit_std']:.2f}. Buckets by UNC = "
                  f"1 − p_teacher(gold token), {first['bucketing']}: easy ≤ {lo:.3f} < medium ≤ {hi:.3f} "
                  f"< hard; tokens: " + ", ".join(f"{b} {first['buckets'][b]['tokens']}" for b in BUCKETS) + ".")
    return table


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors(n: int) -> list:
    """n distinguishable colours (tab10, or tab20 beyond ten)."""
    cmap = pyplot().get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_analysis(stats: dict[str, dict], path: str | Path) -> Path:
    """Three panels (KL, logit std, top-1 agreement) of grouped bars: buckets × students."""
    plt = pyplot()
    labels = list(stats)
    groups = ("all",) + BUCKETS
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(len(labels), 1)
    panels = [("kl", "KL(p‖q) (nats / token)", 1.0), ("student_logit_std", "logit std over the vocabulary (logit units)", 1.0),
              ("top1_agreement", "top-1 agreement with teacher (%)", 100.0)]
    for ax, (key, ylabel, scale) in zip(axes, panels):
        for i, label in enumerate(labels):
            s = stats[label]
            vals = [(s["overall"] if g == "all" else s["buckets"][g])[key] for g in groups]
            vals = [0.0 if v is None else v * scale for v in vals]
            ax.bar([g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))], vals, width, label=label)
        if key == "student_logit_std" and labels:
            t = [(stats[labels[0]]["overall"] if g == "all" else stats[labels[0]]["buckets"][g])["teacher_logit_std"]
                 for g in groups]
            ax.plot(range(len(groups)), [0.0 if v is None else v for v in t], "k--o", label="teacher")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_xlabel("token difficulty (UNC bucket)")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", title="student")
    axes[1].legend(fontsize="small")
    fig.suptitle("Teacher-forced analysis on references, by token difficulty")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_exposure(curves: dict[str, dict], path: str | Path, *, legend_title: str | None = None) -> Path:
    """ExAccErr (%) over l, one line per label (label -> an exposure_bias result, or any dict with its
    `curve` and `length`); a dotted line marks the headline length l."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, ex) in zip(colors(len(curves)), curves.items()):
        xs = [l for l, v in enumerate(ex["curve"], start=1) if v is not None]
        ax.plot(xs, [ex["curve"][l - 1] for l in xs], color=color, label=label)
    length = next(iter(curves.values()), {}).get("length")
    if length:
        ax.axvline(length, color="grey", ls=":", lw=1)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("generation length l (tokens)")
    ax.set_ylabel("ExAccErr(l) (%)")
    ax.set_title("Exposure bias: excess accumulated error, teacher as oracle")
    ax.legend(fontsize="small", title=legend_title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
