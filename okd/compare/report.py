"""The grid's report: report.md (tables per method and per sweep, plots), results.csv, results.json."""

from __future__ import annotations

import csv
import json
import math

from okd.compare.caches import describe_caches
from okd.compare.grid import Plan, format_value
from okd.compare.plots import plot_curves, plot_dynamics, plot_exposure_curves, plot_rouge, plot_sweeps, plot_time
from okd.compare.results import collect_results, hardware
from okd.compare.settings import eval_settings, exposure_runs
from okd.compare.stats import HEADROOM_GOAL, group_rows, headroom, intervals, time_to_quality
from okd.config import get_dotted
from okd.eval.report import format_mean_std, markdown_table
from okd.precision import cpu_features

PLOTS = {"curves": ("valid_curves.png", "Validation during training"), "exposure": ("exposure.png", "Exposure bias"),
         "time": ("time.png", "Training cost"), "rouge": ("rouge.png", "ROUGE-L"), "sweeps": ("sweeps.png", "Ablations"),
         "dynamics": ("dynamics.png", "Online-module dynamics")}
CSV_FIELDS = ["name", "kind", "method", "divergence", "teacher_mode", "sweep", "sweep_key", "sweep_value", "same_as",
              "student_from", "teacher_from", "steps", "train_s", "s_per_step", "median_s_per_step", "tokens_per_s", "generated_tokens",
              "peak_memory_mb", "valid_loss"]


def _num(v, fmt: str = "{:.0f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def eval_sets(rows: list[dict]) -> list[str]:
    """The eval sets with a ROUGE-L in some row, in first-seen order."""
    sets: list[str] = []
    for r in rows:
        for s in r.get("rougeL") or {}:
            if s not in sets:
                sets.append(s)
    return sets


def _table(plan: Plan, rows: list[dict], sets: list[str], *, sweep_key: str | None = None) -> str:
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
            name = {"teacher": "teacher (reference)", "teacher_base": "teacher before tuning (reference)",
                    "student_init": "student init (untrained)"}.get(name, name)
        line = [name] + ([format_value(row.get("sweep_value"))] if sweep_key else [])
        line += [_num(row.get("train_s")), _num(row.get("s_per_step"), "{:.2f}"),
                 _num(row.get("median_s_per_step"), "{:.2f}")]
        line += [format_mean_std((row.get("rougeL") or {}).get(s)) for s in sets]
        if len(sets) > 1:
            line.append(format_mean_std(row.get("rougeL_avg")))
        if xl:
            ex = row.get("exposure") or {}
            line.append(_num(ex.get("at_l"), "{:.1f}") if ex else "-")
        line += [_num(row.get("tokens_per_s")), _num(row.get("peak_memory_mb")), _num(row.get("valid_loss"), "{:.3f}")]
        out.append(line)
    return markdown_table(headers, out)


def _write_plots(plan: Plan, rows: list[dict], sets: list[str]) -> dict[str, str]:
    """{key: file name} of the figures drawn (a figure with nothing to show is left out)."""
    draw = {"curves": lambda p: plot_curves(rows, p), "exposure": lambda p: plot_exposure_curves(rows, p),
            "time": lambda p: plot_time(rows, p), "rouge": lambda p: plot_rouge(rows, sets, p),
            "sweeps": lambda p: plot_sweeps(plan, rows, p), "dynamics": lambda p: plot_dynamics(rows, p)}
    plots = {}
    for key, fn in draw.items():
        p = fn(plan.out / PLOTS[key][0])
        if p is not None:
            plots[key] = p.name
    return plots


def _csv_row(r: dict, fields: list[str], sets: list[str]) -> dict:
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
    return flat


def _write_results(plan: Plan, rows: list[dict], sets: list[str], hw: dict, seeds: dict) -> None:
    """results.json (the grid, the hardware, every row, the seed groups and intervals) and results.csv
    (one flat line per row)."""
    out = plan.out
    (out / "results.json").write_text(json.dumps(
        {"grid": plan.spec.model_dump(mode="json", by_alias=True), "hardware": hw, "rows": rows, **seeds},
        indent=1, ensure_ascii=False, default=str) + "\n")
    fields = list(CSV_FIELDS)
    for s in sets:
        fields += [f"rougeL_{s}_mean", f"rougeL_{s}_std"]
    fields += ["rougeL_avg_mean", "rougeL_avg_std", "exacc_err", "exacc_err_length", "top1_agreement", "kl"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(_csv_row(r, fields, sets))


def _setup_lines(plan: Plan, hw: dict) -> list[str]:
    """The paragraph under the title: models, data, budget, evaluation, hardware."""
    # the budget of a run that overrides none of it (the first run may be the teacher's tuning)
    base_cfg = next((r.cfg for r in plan.runs if not any(k.startswith("train.") for k in r.overrides)),
                    plan.runs[0].cfg)
    tc, dc = base_cfg.train, base_cfg.data
    lines = [f"Teacher `{plan.teacher}`; student `{plan.student_init}`; training data `{dc.train}` "
             f"(template {dc.template}, max length {dc.max_length}).",
             f"Budget per run: {tc.max_steps} steps × batch {tc.batch_size} × grad accum {tc.grad_accum}, "
             f"lr {tc.lr:g}, seed {tc.seed} (unless a run overrides it)."]
    lines += describe_caches(plan.caches)
    if plan.spec.eval is not None:
        s = eval_settings(plan, False)
        decoding = "greedy" if s["greedy"] else (f"{s['seeds']} sampled answers per prompt "
                                                 f"(seeds 0..{s['seeds'] - 1}, temperature 1, top-p 1)")
        lines.append(f"Evaluation: {', '.join(s['data'])} ({s['split']} split, first {s['limit'] or 'all'} prompts), "
                     f"{decoding}, at most {s['max_new_tokens']} new tokens; ROUGE-L ×100, mean ± std over seeds "
                     "(the avg column: mean over sets, std over per-seed averages).")
        if plan.spec.eval.exposure is not None:
            xs = eval_settings(plan, True)
            lines.append(f"ExAccErr@{xs['length']}: exposure bias with `{xs['teacher']}` as oracle on the first "
                         f"{xs['prompts']} prompts of {xs['data'][0]}, {xs['samples']} sampled prefixes per prompt "
                         f"and model, curve to l = {xs['max_len']} (computed for: "
                         f"{', '.join(sorted(exposure_runs(plan)))}; '-' = not computed).")
    lines.append(f"Hardware (of this report; each run's: Provenance): {hw['processor']} {cpu_features()}, "
                 f"{hw['cpu_count']} CPUs, torch {hw['torch']}, "
                 f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}. Train time: the training loop's wall-clock "
                 "(model loading excluded); peak mem: " + ("CUDA max allocated" if hw["gpu"] else
                                                          "the training process's max RSS") + ".")
    return lines


def _seed_lines(seeds: dict) -> list[str]:
    """The tables over training seeds: mean ± std per group, and paired bootstrap intervals."""
    groups, pairs = seeds.get("seed_groups") or [], seeds.get("intervals") or []
    if not groups:
        return []
    sets = sorted({s for g in groups for s in g["rougeL"]})
    body = [[g["name"], g["seeds"], format_mean_std(g.get("valid_loss"), 3), format_mean_std(g.get("train_s"), 0)]
            + [format_mean_std(g["rougeL"].get(s)) for s in sets] for g in groups]
    lines = ["## Over training seeds", "", "Mean ± std over training seeds (each seed's ROUGE-L is its mean over "
             "sampling seeds).", "", markdown_table(["run", "seeds", "valid CE", "train time (s)"]
                                                    + [f"ROUGE-L {s}" for s in sets], body), ""]
    if pairs:
        rows = [[f"{p['a']} − {p['b']}", p["set"], f"{p['mean_diff']:+.2f}",
                 f"[{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]", p["prompts"],
                 "yes" if p["ci95"][0] > 0 or p["ci95"][1] < 0 else "no"] for p in pairs]
        lines += ["Paired bootstrap over prompts (each prompt's ROUGE-L averaged over every training and sampling "
                  "seed; 2000 resamples): the difference of mean ROUGE-L and its 95% interval.", "",
                  markdown_table(["difference", "set", "mean", "95% CI", "prompts", "excludes 0"], rows), ""]
    return lines


def _headroom_lines(plan: Plan, room: list[dict] | None) -> list[str]:
    """Teacher − SFT student before any comparison: KD methods can be ranked only inside it."""
    if room is None:
        return []
    lines = ["## Headroom: teacher − SFT student", ""]
    if plan.spec.teacher_from:
        lines.append(f"Teacher: the model trained by run `{plan.spec.teacher_from}` from `{plan.teacher_base}`"
                     + _selected_note(plan) + ".")
    if not room:
        return lines + ["Not measured yet: the teacher row or the sft run is not evaluated.", ""]
    rows = [[r["set"], f"{r['mean_diff']:+.2f}", f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", r["prompts"],
             r.get("runs_b", "-"), "yes" if r["reaches_goal"] else "**no**"] for r in room]
    lines += ["", markdown_table(["set", "teacher − sft", "95% CI", "prompts", "sft seeds",
                                  f"≥ +{HEADROOM_GOAL:g}, CI > 0"], rows), ""]
    short = [r["set"] for r in room if not r["reaches_goal"]]
    if short:
        lines += [f"**The headroom is below +{HEADROOM_GOAL:g} ROUGE-L (interval excluding 0) on {', '.join(short)}:** "
                  "a KD method's gain or loss there says little about how well it transfers the teacher.", ""]
    return lines


def _speed_lines(pairs: list[dict] | None) -> list[str]:
    """Time to quality (grid key time_to_quality): a's training time to b's best validation CE, and equal time."""
    if not pairs:
        return []
    notes = [f"- {p['a']} vs {p['b']}: {p['reason']}." for p in pairs if "reason" in p]
    pairs = [p for p in pairs if "reason" not in p]
    body = [[f"{p['a']} vs {p['b']}", f"{p['target_valid_loss']:.3f}", _num(p["b_s"]),
             _num(p["a_s"]) if p["a_s"] is not None else f"not reached (best {p['a_best']:.3f})",
             _num(p["speedup"], "{:.2f}×"), _num(p["equal_time_s"]),
             f"{_num(p['a_at_equal_time'], '{:.3f}')} vs {_num(p['b_at_equal_time'], '{:.3f}')}"] for p in pairs]
    return ["## Time to quality", "",
            "b's best validation CE as the quality; the training seconds (the loop's time, validation excluded; a "
            "seed group's mean over seeds) each run takes to first validate at or below it; b's time over a's; "
            "and both CEs at the last validation within the shorter run's time. Seconds measured on a shared "
            "machine: read ratios, and only between runs trained side by side.", "",
            *([markdown_table(["a vs b", "target CE (b's best)", "b: s", "a: s", "speedup (b / a)",
                               "equal time (s)", "CE at equal time (a vs b)"], body), ""] if body else []),
            *([*notes, ""] if notes else [])]


def _provenance_lines(rows: list[dict]) -> list[str]:
    """Where the runs trained and against which teacher weights: one line when all agree, a table (and a
    warning) when the grid's runs come from several machines or teachers (okd compare --import)."""
    runs = [r for r in rows if r["kind"] != "reference" and r.get("provenance")]
    if not runs:
        return []
    machines = {r["provenance"]["machine"] for r in runs}
    teacher_row = next((r for r in rows if r["name"] == "teacher" and r["kind"] == "reference"), {})
    # copies of one teacher: the runs distilling from the teacher row's model (other teachers are others)
    tuned = [r for r in runs if r["provenance"].get("teacher") in (None, teacher_row.get("model"))
             or not teacher_row]
    shas = {r["provenance"].get("teacher_sha") for r in tuned} - {None}
    evaluated = teacher_row.get("model_sha")
    lines = ["## Provenance", ""]
    if len(machines) == 1 and len(shas) <= 1 and (not evaluated or shas <= {evaluated}) \
            and not any(r.get("imported") for r in runs):
        return lines + [f"Every run trained on {next(iter(machines))}"
                        + (f", the distilling ones against teacher weights `{next(iter(shas))}`" if shas else "")
                        + ".", ""]
    body = [[r["name"], r["provenance"]["machine"], r["provenance"].get("finished_at", "-"),
             f"`{r['provenance']['teacher_sha']}`" if r["provenance"].get("teacher_sha") else "-",
             "yes" if r.get("imported") else "no"] for r in runs]
    lines += [markdown_table(["run", "machine", "finished", "teacher weights", "imported"], body), ""]
    if len(shas) > 1 or (evaluated and shas - {evaluated}):
        lines += [f"**Runs were trained against {len(shas | ({evaluated} if evaluated else set()))} different copies "
                  f"of the teacher**" + (f" (the teacher row evaluated `{evaluated}`)" if evaluated else "")
                  + ": a teacher tuned again on another machine or session has other weights; compare runs of one "
                  "copy, or read the differences as including the teacher's.", ""]
    return lines


def _selected_note(plan: Plan) -> str:
    try:
        summary = json.loads((plan.out / "runs" / plan.spec.teacher_from / "summary.json").read_text())
    except (OSError, ValueError):
        return " (not trained yet)"
    sel = summary.get("selected")
    if not sel:
        return f", its last step ({summary.get('steps')})"
    return f", the weights of step {sel['step']} of {summary.get('steps')} (best {sel['metric']}: {sel['value']:.4g})"


def _report_md(plan: Plan, rows: list[dict], sets: list[str], plots: dict[str, str], hw: dict,
               seeds: dict) -> str:
    lines = [f"# {plan.spec.title or 'okd compare: ' + plan.out.name}", ""]
    lines += _headroom_lines(plan, seeds.get("headroom")) + _setup_lines(plan, hw)
    lines += ["", "## Methods", "", _table(plan, [r for r in rows if r["kind"] != "sweep"], sets), ""]
    lines += _seed_lines(seeds) + _speed_lines(seeds.get("time_to_quality")) + _provenance_lines(rows)
    for sw in plan.spec.sweeps:
        srows = [r for r in rows if r.get("sweep") == sw.name]
        if not srows:
            continue
        base_value = get_dotted(plan.run(sw.base_run).cfg, sw.key)  # the base run's resolved value
        base = [dict(r, sweep_value=base_value, kind="run") for r in rows if r["name"] == sw.base_run]
        lines += [f"## Ablation: {sw.key} ({sw.name}, on {sw.base_run})", "",
                  _table(plan, base + srows, sets, sweep_key=sw.key), ""]
    if plots:
        lines += ["## Plots", ""]
        for key, name in plots.items():
            lines += [f"![{PLOTS[key][1]}]({name})", ""]
    cmd = f"okd compare -c {plan.source}" if plan.source else "okd compare -c GRID.yaml"
    lines += [f"Regenerate: `{cmd}` (finished runs and evaluations are reused).", ""]
    return "\n".join(lines)


def write_report(plan: Plan) -> dict:
    """report.md, results.csv, results.json and the PNG plots in the grid's output_dir."""
    plan.out.mkdir(parents=True, exist_ok=True)
    rows = collect_results(plan)
    sets = eval_sets(rows)
    plots = _write_plots(plan, rows, sets)
    hw = hardware()
    seeds = {"seed_groups": group_rows(plan, rows), "intervals": intervals(plan, plan.spec.intervals),
             "headroom": headroom(plan), "time_to_quality": time_to_quality(plan, rows, plan.spec.time_to_quality)}
    _write_results(plan, rows, sets, hw, seeds)
    (plan.out / "report.md").write_text(_report_md(plan, rows, sets, plots, hw, seeds))
    return {"report": plan.out / "report.md", "plots": list(plots.values()), "rows": rows}
