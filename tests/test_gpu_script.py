"""benchmarks/gpu (issue 14): the op/sync counter and the GPU benchmark script, run on CPU.

- benchmarks/count_ops.py counts ops and syncs of hand-made steps exactly, and works end to end on
  the trainer's own step (okd.train.trainer.train_step on a tiny run); the counts are printed, not
  pinned (tests/test_gpu_step.py pins them).
- `bash benchmarks/gpu/run.sh --device cpu --tiny` writes bench.json and bench.md with every section.
- The time budget skips what does not fit, and says so in the results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["## Ops and syncs per step", "## Step time, tokens/s and MFU", "## TRL GKDTrainer", "## Sampler",
            "## Skipped and failed"]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def count_ops():
    return load(ROOT / "benchmarks" / "count_ops.py", "count_ops")


# ----------------------------------------------------------------------------- count_ops

def test_counts_ops_and_syncs_on_cpu(count_ops):
    x = torch.randn(6, requires_grad=True)

    def step():
        y = (x * 2).sum()
        y.backward()  # backward ops are counted too
        m = x.detach() > 0
        _ = x.detach()[m]  # boolean index: 1 sync
        _ = torch.nonzero(m)  # 1
        _ = y.item()  # 1
        _ = bool(m.any())  # 1 (a scalar read)
        z = torch.zeros(6)
        z[m] = 1.0  # boolean index assignment: 1
        _ = x.detach().view(6, 1).t()  # views, no sync
        _ = torch.cumsum(z, 0) + 1  # arithmetic, no sync

    c = count_ops.count_step(step)
    assert c["device"] == "cpu" and c["syncs"] == 5
    assert c["by_sync"] == {"aten._local_scalar_dense": 2, "aten.index": 1, "aten.nonzero": 1, "aten.index_put_": 1}
    assert c["by_op"]["aten.mul"] == 2  # forward x*2 and its backward
    assert c["views"] >= 2 and c["ops"] == sum(c["by_op"].values())
    assert count_ops.count_step(lambda: torch.ones(3) * 2)["syncs"] == 0


def test_optimizer_step_counters_are_not_syncs(count_ops):
    w = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([w], lr=0.1, foreach=False)
    w.grad = torch.ones(4)
    opt.step()

    def step():
        w.grad = torch.ones(4)
        opt.step()

    c = count_ops.count_step(step)
    assert c["syncs"] == 0 and c["optimizer_step_reads"] >= 1


def test_counts_the_trainers_step(count_ops, base_overrides):
    from okd.config import build_config
    from okd.train.setup import setup
    from okd.train.trainer import train_step

    for method in ("fkd", "gkd"):
        cfg = build_config({}, base_overrides + [f"method.name={method}", "method.lmbda=1.0", "method.max_new_tokens=4",
                                                 f"output_dir={base_overrides[-1].split('=', 1)[1]}-{method}"])
        run = setup(cfg, resume=False, progress=False)
        train_step(run)  # warm-up
        c = count_ops.count_step(lambda: train_step(run))
        print(f"{method}: {count_ops.summary(c)}")
        assert c["ops"] > 100 and c["ops"] - c["views"] > 50
        assert any(k in c["by_op"] for k in ("aten.mm", "aten.addmm", "aten.bmm"))
        assert c["syncs"] >= 0 and set(c["by_sync"]) <= set(c["by_op"])


# ----------------------------------------------------------------------------- run.sh / bench.py

def _check_results(d: Path) -> dict:
    data = json.loads((d / "bench.json").read_text())
    text = (d / "bench.md").read_text()
    for header in SECTIONS:
        assert header in text, header
    for key in ("env", "matmul", "ops", "steps", "trl", "sampler", "skipped", "errors"):
        assert key in data, key
    return data


# ~15 s on the shared 2-core machine (not marked slow: under 20 s)
def test_run_sh_cpu_tiny_writes_every_section(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--device", "cpu", "--tiny",
                           "--results-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = _check_results(out)
    assert not data["errors"], data["errors"]
    assert data["matmul"]["tflops_per_s"] > 0
    assert {r["method"].split()[0] for r in data["ops"]} == {"sft", "fkd", "okd", "gkd"}
    assert all(r["ops"] > 0 for r in data["ops"])
    steps = {(r["method"], r["shape"]) for r in data["steps"]}
    assert steps == {(m, s) for m in ("sft", "fkd", "okd", "gkd") for s in ("2x32", "4x64", "4x128")}
    assert all(r["s_per_step"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in data["steps"])
    assert any(r["generated_per_step"] for r in data["steps"] if r["method"] == "gkd")
    assert len(data["trl"]) == 3 or all(s["section"] == "trl" for s in data["skipped"])
    assert len(data["sampler"]) == 5 and all(r["tokens_per_s"] > 0 for r in data["sampler"])
    assert (out / "bench.log").exists()


def test_budget_skips_and_records(tmp_path):
    bench = load(ROOT / "benchmarks" / "gpu" / "bench.py", "okd_gpu_bench")
    b = bench.Budget(100)
    assert b.estimate("fkd", 1024) is None
    b.cost["fkd"] = (10.0, 1024)
    assert b.estimate("fkd", 4096) == pytest.approx(44.0)  # 4x the tokens, +10%
    out = tmp_path / "r"
    code = bench.main(["--device", "cpu", "--tiny", "--budget", "0", "--results-dir", str(out),
                       "--work", str(tmp_path / "work")])
    data = _check_results(out)
    assert code == 0 and not data["steps"] and not data["ops"] and not data["sampler"]
    skipped = {(s["section"], s["what"]) for s in data["skipped"]}
    assert ("steps", "okd 4x128") in skipped and ("sampler", "all") in skipped and ("ops", "gkd 2x32") in skipped
    assert all("time budget" in s["reason"] or "trl" in s["reason"] for s in data["skipped"])
    assert "skipped steps okd 4x128: time budget" in (out / "bench.md").read_text()
