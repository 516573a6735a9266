"""FSDP through `accelerate launch`: two CPU processes (gloo) against one process, and resume.

accelerate enables FSDP only on accelerators, so the launch goes through a small shim (FSDP_SHIM in tests/launch.py)
that lets accelerate join the processes over gloo with the CPU as device; accelerate's FSDP plugin and
wrapping (configs/accelerate/cpu_fsdp.yaml: the settings of fsdp.yaml in fp32), okd's unsharded output
layers, the gathered final save and okd's FSDP checkpoints are the real code. The shim can also
simulate a Ctrl-C after a given step (OKD_TEST_INTERRUPT_AFTER_STEP), so that the interruption falls on
a known step.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from okd.config import build_config
from okd.train import train
from okd.train.checkpoint import checkpoint_dirs

from launch import OUTPUTS, finished_ok, launch_train  # noqa: E402






def _launch(tmp_path: Path, args: list[str], out: Path, **env) -> subprocess.CompletedProcess:
    return launch_train(tmp_path, "fsdp", args, out, **env)


def _assert_close_to(ref: Path, out: Path, files: tuple[str, ...]):
    for f in files:
        a, b = load_file(ref / f), load_file(out / f)
        assert a.keys() == b.keys() and a, (f, sorted(a.keys() ^ b.keys())[:4])
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (f, k, (a[k] - b[k]).abs().max())
    ma, mb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out))
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    for x, y in zip(ma, mb):
        for k in ("loss", "loss_online", "grad_norm_student", "grad_norm_online"):
            assert (k in x) == (k in y), (k, x, y)
            assert abs(x.get(k, 0) - y.get(k, 0)) <= 1e-4 * abs(x.get(k, 0)) + 1e-6, (k, x, y)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert a["tokens"] == b["tokens"] and b["num_processes"] == 2
    assert abs(a["final_metrics"]["valid_loss"] - b["final_metrics"]["valid_loss"]) < 1e-4


def test_fsdp_two_processes_match_one_process_with_accumulation(base_overrides, tmp_path):
    """fkd, frozen teacher sharded too: 2 processes x 1 example x 2 micro-batches == 1 process x 4
    (weights to fp32 tolerance, losses, gradient norms, validation loss, tokens)."""
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        "method.name=fkd", "train.max_steps=3", "data.group_by_length=false", "train.max_grad_norm=1"]
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / "fsdp"
    r = _launch(tmp_path, common + ["train.batch_size=1", "train.grad_accum=2"], out)
    assert finished_ok(r, out), r.stderr[-4000:]
    _assert_close_to(ref, out, OUTPUTS[:1])


@pytest.mark.slow  # two launches, ~35 s
def test_fsdp_okd_checkpoint_and_resume(base_overrides, tiny_dirs, tmp_path):
    """okd (student and online teacher sharded): a run stopped by Ctrl-C after step 3 saves a checkpoint
    with the full tensors gathered from the shards; `--resume` shards them again and the run ends where
    one process without FSDP ends (weights to fp32 tolerance, with clipping active on the online module),
    each step logged once. Also: the final online_module/ holds the adapter (peft alone would write an
    empty one from FSDP-wrapped module names)."""
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        "method.name=okd", "online.layers=null", "train.max_steps=5", "data.group_by_length=false", "train.max_grad_norm=1",
        "train.save_every=2"]
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / "fsdp"
    r = _launch(tmp_path, common + ["train.batch_size=2"], out, OKD_TEST_INTERRUPT_AFTER_STEP="3")
    assert r.returncode != 0 and "okd: interrupted at step 3 of 5; checkpoint saved in" in r.stderr, r.stderr[-4000:]
    assert not (out / "summary.json").exists()
    last = checkpoint_dirs(out / "checkpoints")[-1]
    assert last.name == "step-0000003"
    assert sorted(p.name for p in last.iterdir()) == ["manifest.json", "method.pt", "online.safetensors", "optim.pt",
                                                      "rng-0.pt", "rng-1.pt", "state.json", "student.safetensors"]
    optim = torch.load(last / "optim.pt", weights_only=True)
    assert optim["format"] == "fsdp" and set(optim["optimizers"]) == {"online", "student"}
    student = load_file(last / "student.safetensors")  # whole tensors, not shards
    initial = load_file(tiny_dirs["student"] / "model.safetensors")
    assert {k: v.shape for k, v in student.items()} == {k: v.shape for k, v in initial.items() if k in student}

    r = _launch(tmp_path, common + ["train.batch_size=2", "--resume"], out)
    assert finished_ok(r, out), r.stderr[-4000:]
    assert "resumed from" in r.stderr
    _assert_close_to(ref, out, OUTPUTS)
    assert max(json.loads(line)["grad_norm_online"] for line in (ref / "metrics.jsonl").read_text().splitlines()) > 1


def test_fsdp_checkpoint_is_refused_without_fsdp(base_overrides, tmp_path):
    """A checkpoint's optimizer state is keyed by parameter name under FSDP and by position otherwise:
    resuming it with the other setting is refused with one line."""
    from okd.errors import OkdError
    from okd.train.checkpoint import load_checkpoint

    out = train(build_config({}, base_overrides + ["method.name=sft", "train.max_steps=2", "train.save_every=1"]),
                progress=False)
    last = checkpoint_dirs(out / "checkpoints")[-1]
    optim = torch.load(last / "optim.pt", weights_only=True)
    optim["format"] = "fsdp"
    torch.save(optim, last / "optim.pt")
    from okd.train.manifest import write_manifest

    write_manifest(last)  # as an FSDP run would have written it (not damage)
    with pytest.raises(OkdError, match=r"was written under FSDP; resume it with the distributed setting it was "
                                       r"written with"):
        load_checkpoint(last, student=None, online=None, optimizers={"student": None}, schedulers={})
