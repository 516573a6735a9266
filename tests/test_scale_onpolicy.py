"""The on-policy methods (gkd, imitkd, distillm, minillm, seqkd) and train.eval_rouge under FSDP and
DeepSpeed ZeRO-3: `accelerate launch` of two CPU processes (gloo) through the shims of tests/launch.py.

Every forward of a sharded model is a collective, so generation runs in lockstep
(okd.generation.ready_to_generate: FSDP's root weights summoned, generate(synced_gpus=True); minillm's
sampler and seqkd's cache filling join every forward until all processes are done). Greedy decoding on 2
processes equals 1 process at the same global batch; sampling with another random stream per process
(the shim's OKD_TEST_SEED_PER_RANK) equals the same 2 processes under DDP, which sample the same prompts
with the same streams; Ctrl-C + --resume ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from okd.config import build_config
from okd.train import train

from launch import OUTPUTS, finished_ok, launch_train  # noqa: E402

STRATEGIES = ["fsdp", "zero3"]


def _needs(strategy: str):
    if strategy == "zero3":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -e .[scale])")


def _common(base_overrides, *extra) -> list[str]:
    return [o for o in base_overrides if not o.startswith(("output_dir=", "method."))] + [
        "train.max_steps=3", "data.group_by_length=false", "train.max_grad_norm=1", *extra]


def _run(tmp_path, strategy, args, name, **env) -> Path:
    out = tmp_path / name
    r = launch_train(tmp_path, strategy, args, out, **env)
    assert finished_ok(r, out), r.stderr[-4000:]
    return out


def _assert_same_run(a: Path, b: Path, files=OUTPUTS[:1]):
    for f in files:
        wa, wb = load_file(a / f), load_file(b / f)
        assert wa.keys() == wb.keys() and wa
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), (f, k, (wa[k] - wb[k]).abs().max())
    ma, mb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    for x, y in zip(ma, mb):
        assert x.get("generated_tokens") == y.get("generated_tokens"), (x, y)
        for k in ("loss", "grad_norm_student"):
            assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]) + 1e-6, (k, x, y)
    return ma, mb


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", [
    ["method.name=gkd", "method.lmbda=1"],
    ["method.name=imitkd"],
    ["method.name=distillm", "method.replay_init_prob=1"],
    ["method.name=seqkd"],
], ids=["gkd", "imitkd", "distillm", "seqkd"])
def test_greedy_on_policy_two_processes_equal_one(strategy, method, base_overrides, tmp_path):
    """Greedy samples (the student's; the teacher's for seqkd, whose cache the main process writes) through
    the sharded models: 2 processes x 2 examples == 1 process x 4 (weights, losses, generated tokens).
    minillm always samples and whitens its advantages over each process's batch: it is compared with DDP
    below."""
    _needs(strategy)
    common = _common(base_overrides, *method, "method.gen_temperature=0", "method.max_new_tokens=6")
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = _run(tmp_path, strategy, common + ["train.batch_size=2"], strategy)
    ma, _ = _assert_same_run(ref, out)
    assert sum(m.get("generated_tokens", 0) for m in ma) > 0
    if "method.name=seqkd" in method:  # each answer cached once, by the main process
        keys = [[json.loads(line)["key"] for line in (d / "seqkd_cache.jsonl").read_text().splitlines()]
                for d in (ref, out)]
        assert sorted(keys[1]) == sorted(set(keys[1])) == sorted(keys[0])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", [["method.name=gkd", "method.lmbda=1"], ["method.name=minillm"]],
                         ids=["gkd", "minillm"])
def test_sampled_on_policy_with_samples_ending_apart_equals_ddp(strategy, method, base_overrides, tiny_dirs,
                                                               tmp_path):
    """Sampling at temperature 1 with another random stream per process and 40 more stop tokens, so the
    two processes' samples end several tokens apart: the process done first keeps joining the sharded
    forwards (without sampling) until the other is done. The run equals the same 2 processes under DDP,
    which sample the same prompts with the same streams, each process alone (weights, losses, generated
    tokens, fewer than the maximum). minillm: its own sampler, student and teacher in every forward."""
    _needs(strategy)
    import shutil

    student = tmp_path / "student"
    shutil.copytree(tiny_dirs["student"], student)
    gen = json.loads((student / "generation_config.json").read_text())
    gen["eos_token_id"] = [gen["eos_token_id"], *range(200, 240)]
    (student / "generation_config.json").write_text(json.dumps(gen))
    common = [o for o in _common(base_overrides, *method, "method.max_new_tokens=16", "train.batch_size=2")
              if not o.startswith("student.path=")] + [f"student.path={student}"]
    ddp = _run(tmp_path, "ddp", common, "ddp", OKD_TEST_SEED_PER_RANK="1")
    # ZeRO-3 frees every weight after use (each forward gathers), as with models over stage3_max_live_parameters
    out = _run(tmp_path, strategy, common, strategy, OKD_TEST_SEED_PER_RANK="1", OKD_TEST_DEEPSPEED_RELEASE="1")
    _, mb = _assert_same_run(ddp, out)
    assert 0 < mb[-1]["generated_tokens"] < 3 * 4 * 16 / 2  # samples stopped early


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_on_policy_interrupted_and_resumed_ends_where_the_whole_run_ends(strategy, base_overrides, tmp_path):
    """gkd λ=0.5 (sampled and ground-truth batches by the coin), greedy, with train.eval_rouge every 2
    steps (every process samples the validation answers in lockstep): stopped by Ctrl-C after step 3 and
    resumed on 2 processes, it ends where 1 process x 4 ends over 5 steps (weights, losses, generated
    tokens, each step logged once, the same validation ROUGE-L)."""
    _needs(strategy)
    common = _common(base_overrides, "method.name=gkd", "method.lmbda=0.5", "method.gen_temperature=0",
                     "method.max_new_tokens=6", "train.max_steps=5", "train.save_every=2", "train.eval_every=2",
                     "train.eval_rouge=true", "train.eval_rouge_limit=4")
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / strategy
    r = launch_train(tmp_path, strategy, common + ["train.batch_size=2"], out, OKD_TEST_INTERRUPT_AFTER_STEP="3")
    assert r.returncode != 0 and "okd: interrupted at step 3 of 5; checkpoint saved in" in r.stderr, r.stderr[-4000:]
    r = launch_train(tmp_path, strategy, common + ["train.batch_size=2", "--resume"], out)
    assert finished_ok(r, out) and "resumed from" in r.stderr, r.stderr[-4000:]
    ma, mb = _assert_same_run(ref, out)
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5]
    rouge = [(x.get("valid_rougeL"), y.get("valid_rougeL")) for x, y in zip(ma, mb) if "valid_rougeL" in x]
    assert rouge and all(a == pytest.approx(b, abs=1e-9) for a, b in rouge), rouge
