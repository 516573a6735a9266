"""DeepSpeed ZeRO-3: `accelerate launch` of two CPU processes (gloo) against one process without DeepSpeed.

accelerate enables DeepSpeed only on accelerators, so the launch goes through a small shim (DS_SHIM in tests/launch.py
) that lets accelerate pick gloo and the CPU device, with DeepSpeed's CPU accelerator
(DS_ACCELERATOR=cpu); the DeepSpeed plugin, the engines, ZeRO-3 partitioning (the models load
partitioned: zero3_init_flag), okd's head gathering and its own stepping are the real code. Skipped
where deepspeed is not installed (`pip install -e .[scale]`).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from okd.config import build_config
from okd.errors import OkdError
from okd.train import train

from launch import OUTPUTS, finished_ok, launch_train  # noqa: E402

def _deepspeed_or_skip():
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[scale])")






def _launch(tmp_path: Path, args: list[str], out: Path, expect_ok: bool = True, timeout: int = 600,
            **env) -> subprocess.CompletedProcess:
    r = launch_train(tmp_path, "zero3", args, out, timeout=timeout, **env)
    if expect_ok:
        assert finished_ok(r, out), r.stderr[-4000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_processes"] == 2 and summary["device"] == "cpu"
    return r


def _weights(out: Path) -> dict:
    return {f: load_file(out / f) for f in OUTPUTS if (out / f).is_file()}


@pytest.mark.parametrize("method", ["fkd", "okd"])
def test_deepspeed_zero3_two_processes_match_one_process(method, base_overrides, tiny_dirs, uneven_data, tmp_path):
    """ZeRO-3 on 2 processes (student, frozen or online teacher partitioned) == 1 process without
    DeepSpeed at the same global batch: final weights to fp32 tolerance, logged losses and gradient
    norms, validation loss, tokens. fkd accumulates 2 micro-batches of 1 example per process over very
    uneven lengths; okd trains the student and the online module (two engines, module stepped first)
    with clipping active (the online module's gradient norm is ~2 > train.max_grad_norm=1)."""
    _deepspeed_or_skip()
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        f"method.name={method}", "train.max_steps=3", "data.group_by_length=false", "train.max_grad_norm=1",
        "online.layers=null"]  # the module on every layer: sharded, and its gradient norm above the clip
    if method == "fkd":
        common += [f"data.train={uneven_data}", f"data.valid={uneven_data}", "data.max_length=256"]
        parallel = ["train.batch_size=1", "train.grad_accum=2"]
    else:
        parallel = ["train.batch_size=2"]
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / "zero3"
    r = _launch(tmp_path, common + parallel, out)
    assert r.stdout.count("done:") == 1
    wa, wb = _weights(ref), _weights(out)
    assert wa.keys() == wb.keys() == set(OUTPUTS[:2 if method == "okd" else 1])
    for f in wa:
        assert wa[f].keys() == wb[f].keys()
        for k in wa[f]:
            assert torch.allclose(wa[f][k], wb[f][k], rtol=1e-4, atol=1e-6), (f, k, (wa[f][k] - wb[f][k]).abs().max())
    # the output layer (tied to the input embedding) trained: its gradient, computed by the chunked loss
    # from the gathered weight, reached DeepSpeed's partitions (rows of bytes absent from the data get
    # nothing else)
    initial = load_file(tiny_dirs["student"] / "model.safetensors")
    moved = (wb[OUTPUTS[0]]["model.embed_tokens.weight"] - initial["model.embed_tokens.weight"]).abs().max()
    assert moved > 1e-4
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert a["tokens"] == b["tokens"]
    assert abs(a["final_metrics"]["valid_loss"] - b["final_metrics"]["valid_loss"]) < 1e-4
    ma, mb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out))
    assert [m["step"] for m in mb] == [1, 2, 3]
    for x, y in zip(ma, mb):
        for k in ("loss", "loss_online", "grad_norm_student", "grad_norm_online", "lr", "lr_online"):
            assert (k in x) == (k in y), (k, x, y)
            assert abs(x.get(k, 0) - y.get(k, 0)) <= 1e-4 * abs(x.get(k, 0)) + 1e-6, (k, x, y)
    if method == "okd":
        assert max(m["grad_norm_online"] for m in ma) > 1.0  # clipping was active


def test_deepspeed_zero3_okd_checkpoint_and_resume(base_overrides, tmp_path):
    """okd under ZeRO-3 (student and online teacher, two engines): a run stopped by Ctrl-C after step 3
    saves a checkpoint holding each engine's DeepSpeed partitions plus okd's own state; `--resume` on 2
    processes loads them and the run ends where one process without DeepSpeed ends (weights to fp32
    tolerance, clipping active on the online module), each step logged once. The checkpoint is refused,
    in one line, by a run without DeepSpeed."""
    _deepspeed_or_skip()
    from okd.train.checkpoint import checkpoint_dirs, load_checkpoint

    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        "method.name=okd", "online.layers=null", "train.max_steps=5", "data.group_by_length=false", "train.max_grad_norm=1",
        "train.save_every=2"]
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / "zero3"
    r = _launch(tmp_path, common + ["train.batch_size=2"], out, expect_ok=False, OKD_TEST_INTERRUPT_AFTER_STEP="3")
    assert r.returncode != 0 and "okd: interrupted at step 3 of 5; checkpoint saved in" in r.stderr, r.stderr[-4000:]
    assert not (out / "summary.json").exists()
    dirs = checkpoint_dirs(out / "checkpoints")
    assert [d.name for d in dirs] == ["step-0000002", "step-0000003"]  # keep_checkpoints=2
    last = dirs[-1]
    assert sorted(p.name for p in last.iterdir()) == ["deepspeed", "manifest.json", "method.pt", "optim.pt", "rng-0.pt",
                                                      "rng-1.pt", "state.json"]
    assert sorted(p.name for p in (last / "deepspeed").iterdir()) == ["online", "student"]
    optim = torch.load(last / "optim.pt", weights_only=True)
    assert optim["format"] == "deepspeed" and set(optim["optimizers"]) == set(optim["schedulers"]) == {"online", "student"}
    assert not list((out / "checkpoints").glob(".tmp-*"))

    with pytest.raises(OkdError, match=r"was written under DeepSpeed ZeRO-3; resume it with the distributed setting "
                                       r"it was written with"):
        load_checkpoint(last, student=None, online=None, optimizers={"student": None, "online": None}, schedulers={})

    r = _launch(tmp_path, common + ["train.batch_size=2", "--resume"], out)
    assert "resumed from" in r.stderr and "step-0000003" in r.stderr
    wa, wb = _weights(ref), _weights(out)
    assert wa.keys() == wb.keys() == set(OUTPUTS)
    for f in wa:
        assert wa[f].keys() == wb[f].keys() and wa[f]
        for k in wa[f]:
            assert torch.allclose(wa[f][k], wb[f][k], rtol=1e-4, atol=1e-6), (f, k, (wa[f][k] - wb[f][k]).abs().max())
    ma, mb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out))
    assert [m["step"] for m in mb] == [m["step"] for m in ma] == [1, 2, 3, 4, 5]
    for x, y in zip(ma, mb):
        for k in ("loss", "loss_online", "grad_norm_student", "grad_norm_online", "lr", "lr_online"):
            assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]) + 1e-6, (k, x, y)
    assert max(m["grad_norm_online"] for m in ma) > 1.0  # clipping was active
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert a["tokens"] == b["tokens"] and a["steps"] == b["steps"] == 5


def test_plain_checkpoint_is_refused_under_deepspeed(base_overrides, tmp_path):
    """A checkpoint of a run without DeepSpeed has no engine partitions: resuming it under DeepSpeed is
    refused with one line (before any engine reads a file)."""
    from okd.train.checkpoint import checkpoint_dirs, load_checkpoint

    out = train(build_config({}, base_overrides + ["method.name=sft", "train.max_steps=1", "train.save_every=1"]),
                progress=False)
    last = checkpoint_dirs(out / "checkpoints")[-1]
    with pytest.raises(OkdError, match=r"was written without FSDP or DeepSpeed; resume it with the distributed "
                                       r"setting it was written with"):
        load_checkpoint(last, student=None, online=None, optimizers={"student": None}, schedulers={},
                        engines={"student": None})


def test_deepspeed_zero3_nan_stops_before_any_step(base_overrides, tmp_path):
    """A learning rate of 1e30 makes the gradients non-finite within a few steps: okd computes the
    global gradient norm of the ZeRO-3 partitions before stepping and stops with its usual one line."""
    _deepspeed_or_skip()
    args = [o for o in base_overrides if not o.startswith(("output_dir=", "teacher."))] + [
        "method.name=sft", "train.lr=1e30", "train.max_steps=20", "train.max_grad_norm=0", "train.batch_size=2"]
    out = tmp_path / "nan"
    r = _launch(tmp_path, args, out, expect_ok=False)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("okd:")]
    assert lines and all(re.fullmatch(r"okd: error: non-finite .* at step (\d+); training stopped, no checkpoint was "
                                      r"saved \(lower train\.lr, check the data, or set train\.on_nan=skip\)", line)
                         for line in lines), lines
    assert not (out / "summary.json").exists()


# --------------------------------------------------------------------------- refusals (no launch needed)

def _fake_accelerator(ds_config: dict, processes: int = 2):
    return SimpleNamespace(num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config)))


@pytest.mark.parametrize("ds_config, pattern", [
    ({"zero_optimization": {"stage": 2}}, r"DeepSpeed ZeRO stage 2 is not supported by okd train; use zero_stage: 3"),
    ({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}, r"DeepSpeed fp16 is not supported .* bf16"),
    ({"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW"}},
     r"the DeepSpeed config sets 'optimizer'; okd builds its own AdamW"),
])
def test_deepspeed_configs_refused(ds_config, pattern):
    from okd.train.sharding import configure_deepspeed

    with pytest.raises(OkdError, match=pattern):
        configure_deepspeed(build_config({}, []), _fake_accelerator(ds_config))


def test_deepspeed_config_follows_okd(caplog):
    """okd's loop owns accumulation, clipping and the micro-batch size; a differing value in the
    DeepSpeed config is replaced, with a warning naming it."""
    from okd.train.sharding import configure_deepspeed

    ds = {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 4, "gradient_clipping": "auto",
          "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": True}}
    cfg = build_config({}, ["train.batch_size=3", "train.grad_accum=2", "train.max_grad_norm=0.5"])
    configure_deepspeed(cfg, _fake_accelerator(ds, processes=4))
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["train_batch_size"] == 12
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "gradient_accumulation_steps=4 replaced by 1" in caplog.text


def test_every_method_runs_under_deepspeed_and_fsdp():
    """Nothing is refused by method any more (the on-policy ones: tests/test_scale_onpolicy.py); FSDP2 is."""
    from accelerate.utils import DistributedType

    from okd.config import METHODS
    from okd.train.sharding import check_distributed

    for name in METHODS:
        for kind in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            check_distributed(build_config({}, [f"method.name={name}", "train.eval_rouge=true"]), kind)
    with pytest.raises(OkdError, match="FSDP version 2 is not supported by okd train"):
        check_distributed(build_config({}, []), DistributedType.FSDP, fsdp_version=2)
