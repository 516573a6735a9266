"""Self-checking smoke test of `okd train` under DeepSpeed ZeRO-3 on one GPU (prints PASS/FAIL).

Runs, on tiny random Llama models (okd.models.tiny; no download), through the real command:
  1. fkd and okd, fp32: `accelerate launch` with configs/accelerate/deepspeed_zero3.yaml (ZeRO-3,
     zero3_init_flag, 1 process) against the same run without DeepSpeed (`python -m okd train`):
     final student (and online module) weights must agree to fp32 tolerance;
  2. okd in bf16 under ZeRO-3 for more steps: finishes, every logged loss finite, the loss falls,
     student/ loads with AutoModelForCausalLM and online_module/ with peft.
Exit status 0 only if every check passes. Needs deepspeed importable (pip install deepspeed, or carry
its wheel). Typical use on a lent GPU machine, from the repository root:

    python3 benchmarks/gpu/deepspeed_zero3_smoke.py --out /tmp/okd-ds-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from okd.models.tiny import save_tiny

    dirs = {"teacher": save_tiny(work / "teacher", "llama", layers=4, hidden=256, seed=1),
            "student": save_tiny(work / "student", "llama", layers=2, hidden=128, seed=2)}
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    rows = []
    for i in range(64):
        a, b = words[i % 8], words[(i * 3 + 1) % 8]
        out = f"{a} {b} {a}." if i % 3 else " ".join([a, b] * 12)  # short and long answers
        rows.append({"instruction": f"Say {a} and {b}.", "input": "" if i % 2 else f"n={i}", "output": out})
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**dirs, "data": data}


def run(cmd: list[str], log: Path, timeout: int) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    t = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t


def okd_cmd(args: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "okd", "train", "--quiet", *args, f"output_dir={out}"]


def ds_cmd(args: list[str], out: Path, mixed_precision: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "1",
            "--mixed_precision", mixed_precision, "--main_process_port", str(free_port()),
            "-m", "okd", "train", "--quiet", *args, f"output_dir={out}"]


def compare(a: Path, b: Path, rtol: float, atol: float) -> tuple[bool, str]:
    import torch
    from safetensors.torch import load_file

    notes, ok = [], True
    for f in ("student/model.safetensors", "online_module/adapter_model.safetensors"):
        if not (a / f).is_file() and not (b / f).is_file():
            continue
        if not ((a / f).is_file() and (b / f).is_file()):
            return False, f"{f} missing in one run"
        wa, wb = load_file(a / f), load_file(b / f)
        if wa.keys() != wb.keys():
            return False, f"{f}: different tensors {sorted(wa.keys() ^ wb.keys())[:4]}"
        worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
        close = all(torch.allclose(wa[k].float(), wb[k].float(), rtol=rtol, atol=atol) for k in wa)
        ok &= close
        notes.append(f"{f}: {len(wa)} tensors, max |diff| {worst:.2e}")
    return ok, "; ".join(notes)


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/okd-ds-smoke"))
    p.add_argument("--timeout", type=int, default=240, help="seconds per training run")
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("FAIL: no CUDA device")
        return 1
    try:
        import deepspeed
    except ImportError as e:
        print(f"FAIL: deepspeed not importable ({e})")
        return 1
    import accelerate
    import peft
    import transformers

    print(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
          f"accelerate {accelerate.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
          flush=True)
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    inputs = make_inputs(a.out / "inputs")
    base = [f"teacher.path={inputs['teacher']}", f"student.path={inputs['student']}", f"data.train={inputs['data']}",
            f"data.valid={inputs['data']}", "data.max_length=192", "data.group_by_length=false", "train.lr=1e-3",
            "online.rank=8", "train.max_grad_norm=1", "train.seed=0"]
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}", flush=True)

    # 1. fp32: ZeRO-3 == no DeepSpeed
    for method, accum in (("fkd", 2), ("okd", 1)):
        args = base + [f"method.name={method}", "train.max_steps=4", "train.batch_size=4", f"train.grad_accum={accum}",
                       "train.mixed_precision=no"]
        ref, z3 = a.out / f"{method}-plain-fp32", a.out / f"{method}-zero3-fp32"
        rc1, t1 = run(okd_cmd(args, ref), a.out / f"{ref.name}.log", a.timeout)
        rc2, t2 = run(ds_cmd(args, z3, "no"), a.out / f"{z3.name}.log", a.timeout)
        if rc1 or rc2:
            check(f"{method} fp32 ZeRO-3 == plain", False, f"exit {rc1} (plain, {t1:.0f}s), {rc2} (ZeRO-3, {t2:.0f}s); "
                  f"see {a.out}/*.log")
            continue
        ok, detail = compare(ref, z3, rtol=1e-3, atol=1e-5)
        la, lb = metrics(ref), metrics(z3)
        losses_ok = len(la) == len(lb) == 4 and all(abs(x["loss"] - y["loss"]) <= 1e-3 * abs(x["loss"]) + 1e-6
                                                    for x, y in zip(la, lb))
        check(f"{method} fp32 ZeRO-3 == plain", ok and losses_ok,
              f"{detail}; losses {[round(m['loss'], 5) for m in la]} vs {[round(m['loss'], 5) for m in lb]}; "
              f"{t1:.0f}s / {t2:.0f}s")

    # 2. bf16 okd under ZeRO-3, longer
    out = a.out / "okd-zero3-bf16"
    args = base + ["method.name=okd", "train.max_steps=30", "train.batch_size=8", "train.mixed_precision=bf16",
                   "train.log_every=1"]
    rc, t = run(ds_cmd(args, out, "bf16"), a.out / f"{out.name}.log", a.timeout)
    ms = metrics(out)
    finite = bool(ms) and all(m["loss"] == m["loss"] and abs(m["loss"]) < float("inf") for m in ms)
    falls = len(ms) >= 10 and sum(m["loss"] for m in ms[-5:]) < sum(m["loss"] for m in ms[:5])
    detail = f"exit {rc}, {t:.0f}s, {len(ms)} steps logged"
    if ms:
        detail += f", loss {ms[0]['loss']:.4f} -> {ms[-1]['loss']:.4f}, loss_online {ms[0].get('loss_online', 0):.3f} -> " \
                  f"{ms[-1].get('loss_online', 0):.3f}"
    loads = False
    if rc == 0:
        try:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(out / "student")
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(inputs["teacher"]), out / "online_module")
            loads = True
            summary = json.loads((out / "summary.json").read_text())
            detail += f", peak memory {summary['peak_memory_mb']} MB"
        except Exception as e:  # noqa: BLE001 - reported as a failure
            detail += f", outputs do not load: {type(e).__name__}: {e}"
    check("okd bf16 ZeRO-3 trains", rc == 0 and finite and falls and loads, detail)

    failed = [n for n, ok, _ in results if not ok]
    print(("PASS" if not failed else "FAIL") + f": {len(results) - len(failed)}/{len(results)} checks"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
