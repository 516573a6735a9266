"""train.select_by: keep the weights of the best validation so far, and make them the run's student/.

The best weights live in <output_dir>/best/ (student/ and online_module/ as save_outputs writes them,
and best.json naming the metric, its value and the step), written whenever a validation beats the
one before; at the end they replace the last step's student/ when they are better. A resumed run
forgets a best that is newer than the checkpoint it resumes from (those steps are trained again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

HIGHER_IS_BETTER = {"valid_loss": False, "valid_rougeL": True}


class BestWeights:
    def __init__(self, out: Path, metric: str, step: int):
        self.metric, self.dir = metric, out / "best"
        self.record = None
        if metric == "last":
            return
        try:
            record = json.loads((self.dir / "best.json").read_text())
        except (OSError, ValueError):
            record = None
        if record and record.get("metric") == metric and record.get("step", 1 << 62) <= step \
                and (self.dir / "student").is_dir():
            self.record = record
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def enabled(self) -> bool:
        return self.metric != "last"

    def better(self, value: float) -> bool:
        if self.record is None:
            return True
        old = self.record["value"]
        return value > old if HIGHER_IS_BETTER[self.metric] else value < old

    def offer(self, run, evaluation: dict) -> None:
        """After a validation: save the weights when they are the best so far (every process takes part)."""
        if not self.enabled:
            return
        acc = run.accelerator
        value = evaluation.get(self.metric)
        decide = float(value is not None and self.better(value)) if acc.is_main_process else 0.0
        if run.world > 1:  # valid_rougeL is measured on the main process only: its decision is everyone's
            decide = float(acc.reduce(torch.tensor(decide, device=acc.device), "sum").item())
        if not decide:
            return
        tmp = self.dir.with_name("best.tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        run.strategy.save_outputs(tmp, run.tokenizer)
        if acc.is_main_process:
            self.record = {"metric": self.metric, "value": float(value), "step": run.state.step}
            (tmp / "best.json").write_text(json.dumps(self.record) + "\n")
            shutil.rmtree(self.dir, ignore_errors=True)
            tmp.rename(self.dir)
        acc.wait_for_everyone()

    def finish(self, out: Path) -> dict | None:
        """Main process, after the last step's outputs are written: student/ (and online_module/) become the
        best weights; returns what summary.json records as `selected`."""
        if not self.enabled or self.record is None:
            return None
        for sub in ("student", "online_module"):
            if (self.dir / sub).is_dir():
                shutil.rmtree(out / sub, ignore_errors=True)
                shutil.move(str(self.dir / sub), str(out / sub))
        shutil.rmtree(self.dir, ignore_errors=True)
        return dict(self.record)
