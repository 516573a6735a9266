"""`okd analyze`: the paper's §IV-A study (divergence × temperature, teacher-forced, by difficulty).

Orchestration (beside okd.compare and okd.demo): it trains a small grid with okd.train, one short
run per (divergence, τ), or takes trained students, then measures each against the teacher with the
eval library's teacher-forced stats (okd.eval.teacher_forced) and writes analysis.json, analysis.md
and analysis.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from okd.errors import OkdError

ANALYZE_METHODS = {"fkl": "fkd", "rkl": "rkd", "jsd": "jsd"}


def train_grid(teacher: str, student: str, data: str, out_dir: str | Path, *, divergences=("fkl", "rkl", "jsd"),
               taus=(1.0, 2.0, 4.0), steps: int = 200, template: str = "alpaca",
               overrides: list[str] | None = None, log=print) -> list[tuple[str, Path]]:
    """Short training runs, one per (divergence, τ); returns (label, student directory) pairs.

    A run whose directory already holds summary.json and student/ is reused, not retrained.
    """
    from okd.config import build_config
    from okd.train import train

    runs = []
    for div in divergences:
        if div not in ANALYZE_METHODS:
            raise OkdError(f"--divergences: {div!r} is not one of {', '.join(ANALYZE_METHODS)}")
        for tau in taus:
            label = f"{div} τ={tau:g}"
            run_dir = Path(out_dir) / f"{div}_tau{tau:g}"
            tree = {"teacher": {"path": teacher}, "student": {"path": student},
                    "data": {"train": data, "template": template},
                    "method": {"name": ANALYZE_METHODS[div], "divergence": div, "temperature": float(tau)},
                    "train": {"max_steps": steps}, "output_dir": str(run_dir)}
            if (run_dir / "summary.json").is_file() and (run_dir / "student").is_dir():
                log(f"reusing the finished run {run_dir} for {label}")  # re-running analyze is cheap
                runs.append((label, run_dir / "student"))
                continue
            log(f"training {label} for {steps} steps -> {run_dir}")
            out = Path(train(build_config(tree, overrides)))
            runs.append((label, out / "student"))
    return runs


def student_label(directory: str | Path) -> tuple[str, Path]:
    """(label, model directory) for a trained run directory or a bare model directory.

    A run directory (with config.yaml and student/) is labelled "<divergence> τ=<temperature>".
    """
    d = Path(directory)
    cfg_path = d / "config.yaml"
    if cfg_path.is_file() and (d / "student").is_dir():
        import yaml

        method = (yaml.safe_load(cfg_path.read_text()) or {}).get("method") or {}
        div = method.get("divergence") or method.get("name") or d.name
        return f"{div} τ={float(method.get('temperature', 1.0)):g}", d / "student"
    return d.name, d


def run_analysis(teacher_path: str, students: list[tuple[str, str | Path]], data: str, out_dir: str | Path, *,
                 split: str = "test", template: str = "alpaca", limit: int | None = 200, max_length: int = 512,
                 batch_size: int = 8, thresholds: tuple[float, float] | None = None, dtype: str = "float32",
                 log=print) -> dict:
    """Teacher-forced stats of each (label, student) against the teacher on the references of `data`.

    Writes analysis.json, analysis.md and analysis.png in out_dir; returns {label: stats}.
    """
    from okd.data import load_examples
    from okd.eval.report import analysis_table, plot_analysis
    from okd.eval.runner import load_model_and_tokenizer, reference_batches
    from okd.eval.teacher_forced import teacher_forced_stats
    from okd.models.loading import check_compatible

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, t_tok = load_model_and_tokenizer(teacher_path, dtype)
    examples = load_examples(data, split=split, limit=limit)
    batches = reference_batches(examples, t_tok, template, max_length, batch_size)
    stats: dict[str, dict] = {}
    for label, path in students:
        model, tok = load_model_and_tokenizer(str(path), dtype)
        vocab = check_compatible(t_tok, tok, teacher, model)
        log(f"analysing {label} ({path})")
        stats[label] = {**teacher_forced_stats(model, teacher, batches, vocab_size=vocab, thresholds=thresholds),
                        "path": str(path)}
        del model
    table = analysis_table(stats)
    (out_dir / "analysis.json").write_text(json.dumps(
        {"teacher": teacher_path, "data": data, "split": split, "examples": len(examples), "students": stats},
        indent=2, ensure_ascii=False) + "\n")
    (out_dir / "analysis.md").write_text(table + "\n")
    plot_analysis(stats, out_dir / "analysis.png")
    return stats
