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
    teacher_cache: {top_k: 64}        # optional: fkd/rkd/jsd/tvd/... runs share one teacher cache per
                                      # (teacher, data), built once (okd.compare.caches)
    intervals: [[okd, fkd], [okd_t2, fkd_t2]]   # optional: paired bootstrap intervals of a − b per eval
                                      # set (default: okd − every other seed group)
    time_to_quality: [[okd, gkd]]     # optional: a's training time to b's best validation CE, and equal time
    eval:                             # okd eval's settings (okd.eval.EvalConfig), grid defaults, plus:
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

`okd compare --lanes N` runs N runs at once, each in its own process, in dependency order.

The package: `grid` (schema and plan), `settings` (a plan's evaluation settings), `state` (a run's
state on disk), `execute` (training, evaluation, run_compare), `lanes` (--lanes), `archive` (a grid's
results without weights, `--export`/`--import`, and each run's provenance), `results` (reading runs and
evaluations into rows), `report` (report.md, results.csv/json) and `plots` (the figures).
"""

from okd.compare.execute import (check_run_config, describe_plan, ensure_student_inits, evaluate_model, run_compare,
                                 train_run)
from okd.compare.state import run_status
from okd.compare.grid import (EvalSpec, ExposureSpec, GridSpec, Plan, Run, RunSpec, StudentInit, StudentInitPlan,
                              SweepSpec, format_value, load_grid, plan_grid)
from okd.compare.report import write_report
from okd.compare.results import collect_results, hardware
from okd.compare.settings import eval_config, eval_settings, exposure_runs

__all__ = [
    "EvalSpec", "ExposureSpec", "GridSpec", "Plan", "Run", "RunSpec", "StudentInit", "StudentInitPlan", "SweepSpec",
    "check_run_config", "collect_results", "describe_plan", "ensure_student_inits", "eval_config", "eval_settings",
    "evaluate_model", "exposure_runs", "format_value", "hardware", "load_grid", "plan_grid", "run_compare",
    "run_status", "train_run", "write_report",
]
