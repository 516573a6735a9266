"""Reliability and scale: exact resume after SIGKILL, faults (NaN, Ctrl-C, failed saves), safe
serialisation, and data parallelism / gradient accumulation against one big batch.

The subprocess tests run the real command (`python -m okd train`, `accelerate launch -m okd`) with one
thread per process, as the in-process reference runs do (conftest sets torch threads to 1), so that
the CPU kernels, and therefore the weights, are bit-identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from okd.config import build_config
from okd.errors import OkdError
from okd.train import train
from okd.train.checkpoint import checkpoint_dirs

from launch import OUTPUTS, ROOT, exited_ok, free_port, launch_env  # noqa: E402






def _okd(*args) -> list[str]:
    return [sys.executable, "-m", "okd", "train", "--quiet", *args]


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f: load_file(out / f) for f in OUTPUTS if (out / f).is_file()}


def _assert_equal_weights(a: Path, b: Path, exact: bool = True, rtol: float = 1e-4, atol: float = 1e-6):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for f in wa:
        assert wa[f].keys() == wb[f].keys()
        for k in wa[f]:
            if exact:
                assert torch.equal(wa[f][k], wb[f][k]), (f, k, (wa[f][k] - wb[f][k]).abs().max())
            else:
                assert torch.allclose(wa[f][k], wb[f][k], rtol=rtol, atol=atol), (f, k, (wa[f][k] - wb[f][k]).abs().max())


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- exact resume after kill -9

@pytest.mark.parametrize("method", ["okd", "gkd"])
def test_sigkill_then_resume_is_bit_exact(method, base_overrides, tmp_path):
    """A real run killed with SIGKILL once a checkpoint exists, then `--resume`d, ends with the same
    student (and online module) bit for bit as an uninterrupted run; metrics.jsonl has each step once."""
    steps = 24
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        f"method.name={method}", f"train.max_steps={steps}", "train.save_every=2", "train.keep_checkpoints=2",
        "method.max_new_tokens=6"]
    if method == "gkd":
        common += ["method.lmbda=0.5"]
    ref = train(build_config({}, common + [f"output_dir={tmp_path / 'ref'}"]), progress=False)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_okd(*common, f"output_dir={out}"), env=launch_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step-*/state.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoint_dirs(out / "checkpoints"))
    assert killed_at < steps

    r = subprocess.run(_okd(*common, f"output_dir={out}", "--resume"), env=launch_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    _assert_equal_weights(ref, out, exact=True)
    assert _steps(out) == list(range(1, steps + 1))
    assert len(checkpoint_dirs(out / "checkpoints")) == 2  # train.keep_checkpoints
    assert not list((out / "checkpoints").glob(".tmp-*"))


# --------------------------------------------------------------------------- interrupted saves, failed saves

def test_failed_save_keeps_previous_checkpoint_and_resume_ignores_leftovers(base_overrides, tmp_path, monkeypatch):
    """A save that fails midway (disk full) leaves the previous checkpoint intact and stops with one
    message; a half-written `.tmp-*` directory (a kill during a save) and a checkpoint moved aside for
    replacement are tidied on resume, which then ends bit-identical to an uninterrupted run."""
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        "method.name=okd", "train.max_steps=6", "train.save_every=2", "train.keep_checkpoints=1"]
    ref = train(build_config({}, common + [f"output_dir={tmp_path / 'ref'}"]), progress=False)

    import okd.train.checkpoint as ckpt

    real_save_file, calls = ckpt.save_file, {"n": 0}

    def failing_save_file(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the online module of the second checkpoint (step 4)
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save_file(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    out = tmp_path / "run"
    cfg = build_config({}, common + [f"output_dir={out}"])
    with pytest.raises(OkdError, match=r"could not save the checkpoint of step 4 .*No space left on device.*"
                                       r"step-0000002 is intact"):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    root = out / "checkpoints"
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000002"]
    assert not list(root.glob(".tmp-*"))  # the failed save cleaned up after itself

    # now what a SIGKILL in the middle of a save leaves: a partial temporary directory ...
    partial = root / ".tmp-step-0000004"
    shutil.copytree(root / "step-0000002", partial)
    (partial / "state.json").unlink()
    (partial / "student.safetensors").write_bytes(b"cut")
    # ... and, when the same step was being saved again, the complete copy moved aside
    os.replace(root / "step-0000002", root / ".tmp-old-step-0000002")
    assert checkpoint_dirs(root) == []
    train(cfg, resume=True, progress=False)
    assert not list(root.glob(".tmp-*"))
    _assert_equal_weights(ref, out, exact=True)
    assert _steps(out) == list(range(1, 7))


# --------------------------------------------------------------------------- NaN / inf

def _nan_after(monkeypatch, cls, good_calls: int, times: int = 10**9):
    """Make cls.losses return NaN from call `good_calls + 1` on, `times` times."""
    real, calls = cls.losses, {"n": 0}

    def losses(self, batch, norm):
        out = real(self, batch, norm)
        calls["n"] += 1
        if good_calls < calls["n"] <= good_calls + times:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(cls, "losses", losses)


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(base_overrides, monkeypatch):
    from okd.methods.kd import FrozenTeacherKD

    _nan_after(monkeypatch, FrozenTeacherKD, good_calls=4)
    cfg = build_config({}, base_overrides + ["method.name=fkd", "train.max_steps=8", "train.save_every=2"])
    with pytest.raises(OkdError) as info:
        train(cfg, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert re.search(r"non-finite loss_student=nan(, grad_norm_student=nan)? at step 5; training stopped, last good checkpoint kept at .*step-0000004", msg)
    out = Path(cfg.output_dir)
    last = checkpoint_dirs(out / "checkpoints")[-1]
    assert last.name == "step-0000004" and all(torch.isfinite(t).all() for t in load_file(last / "student.safetensors").values())
    assert not (out / "summary.json").exists()


def test_inf_from_a_huge_lr_stops_the_run(base_overrides):
    """No monkeypatching: a learning rate of 1e30 blows the weights up within a few steps."""
    cfg = build_config({}, [o for o in base_overrides if not o.startswith("teacher.")]
                       + ["method.name=sft", "train.lr=1e30", "train.max_steps=20", "train.max_grad_norm=0"])
    with pytest.raises(OkdError, match=r"non-finite .* at step \d+; training stopped"):
        train(cfg, progress=False)


def test_nan_skip_counts_skipped_batches(base_overrides, monkeypatch):
    from okd.methods.okd import OnlineTeacherKD

    _nan_after(monkeypatch, OnlineTeacherKD, good_calls=2, times=2)
    cfg = build_config({}, base_overrides + ["method.name=okd", "train.max_steps=5", "train.on_nan=skip"])
    out = train(cfg, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["skipped_steps"] == 2
    assert _steps(out) == [1, 2, 3, 4, 5]
    for w in _weights(out).values():
        assert all(torch.isfinite(t).all() for t in w.values())


def test_nan_skip_gives_up_when_every_batch_is_bad(base_overrides, monkeypatch):
    from okd.methods.kd import FrozenTeacherKD

    _nan_after(monkeypatch, FrozenTeacherKD, good_calls=0)
    cfg = build_config({}, base_overrides + ["method.name=fkd", "train.max_steps=5", "train.on_nan=skip"])
    with pytest.raises(OkdError, match=r"at step 1 \(20 batches in a row\)"):
        train(cfg, progress=False)


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("sig,code,what", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_sigint_saves_a_checkpoint_and_exits_with_one_line(base_overrides, tmp_path, sig, code, what):
    """Ctrl-C, and a cluster scheduler's SIGTERM (with the default train.save_every: 0), finish the step,
    save a checkpoint and exit with one line and their own code (128 + the signal)."""
    out = tmp_path / "run"
    args = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        "method.name=fkd", "train.max_steps=100000", f"output_dir={out}"]
    proc = subprocess.Popen(_okd(*args), env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    final = [line for line in err.splitlines() if line.startswith("okd:")]
    assert len(final) == 1 and err.rstrip().endswith(final[0])
    m = re.fullmatch(rf"okd: {what} at step (\d+) of 100000; checkpoint saved in (\S+); continue with the "
                     r"same command and --resume", final[0])
    assert m, final[0]
    step = int(m.group(1))
    last = checkpoint_dirs(out / "checkpoints")[-1]
    assert str(last) == m.group(2) and json.loads((last / "state.json").read_text())["step"] == step
    assert _steps(out) == list(range(1, step + 1))


# --------------------------------------------------------------------------- safety

def test_no_unsafe_deserialisation_in_the_package():
    """Every torch.load passes weights_only=True; no pickle, no trust_remote_code=True by default."""
    offenders = []
    for path in (ROOT / "okd").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find("\n", text.find(")", m.start()))]
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
        for pattern in (r"^\s*import (c?pickle|dill|joblib)", r"^\s*from (c?pickle|dill|joblib) import",
                        r"trust_remote_code\s*=\s*True", r"safe_serialization\s*=\s*False", r"allow_pickle\s*=\s*True"):
            offenders += [f"{path}: {pattern}" for _ in re.finditer(pattern, text, re.M)]
    assert not offenders, offenders
    cfg = build_config({}, [])
    assert cfg.student.trust_remote_code is False and cfg.teacher.trust_remote_code is False


def test_checkpoints_hold_only_safetensors_and_plain_tensors(base_overrides):
    cfg = build_config({}, base_overrides + ["method.name=gkd", "train.max_steps=2", "method.max_new_tokens=4",
                                             "method.lmbda=1"])
    out = train(cfg, progress=False)
    last = checkpoint_dirs(out / "checkpoints")[-1]
    for f in last.iterdir():
        if f.suffix == ".pt":
            torch.load(f, weights_only=True)  # raises if anything but tensors/containers/numbers is in it
        else:
            assert f.suffix in (".safetensors", ".json"), f
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))


# --------------------------------------------------------------------------- scale: accumulation and DDP

def test_uneven_lengths_make_micro_batch_means_differ(base_overrides, uneven_data):
    """Guard for the tests below: on this data, the gradient of a mean of per-micro-batch means (the
    TRL bug) differs from that of the per-token mean okd uses, so matching a big batch really tests
    the normalisation."""
    from okd.data import Collator, encode_examples, load_examples
    from okd.methods import Models, build_method
    from okd.models.loading import load_model, load_tokenizer

    cfg = build_config({}, base_overrides + [f"data.train={uneven_data}", "method.name=sft", "data.max_length=256"])
    tok = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    method = build_method(cfg, Models(student=student, teacher=None, tokenizer=tok, vocab_size=len(tok)))
    feats, _ = encode_examples(load_examples(cfg.data.train)[:4], tok, cfg.data.template, cfg.data.max_length)
    collate = Collator(tok.pad_token_id)
    counts = [sum(1 for y in f["labels"] if y != -100) for f in feats]
    assert max(counts) > 10 * min(counts)

    def grad(weights):
        student.zero_grad()
        sum(w * method.losses(collate([f]), 1.0)["student"] for w, f in zip(weights, feats)).backward()
        return torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])

    per_token = grad([1 / sum(counts)] * len(feats))
    mean_of_means = grad([1 / (c * len(feats)) for c in counts])
    assert (per_token - mean_of_means).norm() > 0.2 * per_token.norm()


def test_accumulation_matches_big_batch_on_uneven_lengths(base_overrides, uneven_data, tmp_path):
    common = base_overrides + [f"data.train={uneven_data}", "data.max_length=256", "method.name=fkd",
                               "train.max_steps=3", "data.group_by_length=false"]
    big = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'big'}"]), progress=False)
    acc = train(build_config({}, common + ["train.batch_size=1", "train.grad_accum=4", f"output_dir={tmp_path / 'acc'}"]),
                progress=False)
    _assert_equal_weights(big, acc, exact=False)


def _launch(config: str, args: list[str], out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of two CPU processes joined over gloo, with a config of configs/accelerate."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
           "--main_process_port", str(free_port()),
           "-m", "okd", "train", "--quiet", *args, f"output_dir={out}"]
    r = subprocess.run(cmd, env=launch_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2
    return r


@pytest.mark.parametrize("method", ["fkd", "okd"])
def test_two_process_ddp_matches_one_process(method, base_overrides, uneven_data, tmp_path):
    """`accelerate launch`, 2 processes (gloo) x per-process batch == 1 process x the same global batch:
    weights (fp32 tolerance), logged losses, validation loss and token counts, with global clipping
    (train.max_grad_norm=1). fkd also accumulates over sequences of very different lengths."""
    common = [o for o in base_overrides if not o.startswith("output_dir=")] + [
        f"method.name={method}", "train.max_steps=3", "data.group_by_length=false", "train.save_every=2"]
    if method == "fkd":  # 2 processes x 1 example x 2 micro-batches == 1 process x 4
        common += [f"data.train={uneven_data}", f"data.valid={uneven_data}", "data.max_length=256"]
        parallel = ["train.batch_size=1", "train.grad_accum=2"]
    else:  # 2 processes x 2 examples == 1 process x 4
        parallel = ["train.batch_size=2"]
    ref = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]), progress=False)
    out = tmp_path / "two"
    r = _launch("cpu_ddp.yaml", common + parallel, out)
    assert r.stdout.count("done:") == 1
    _assert_equal_weights(ref, out, exact=False)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert a["tokens"] == b["tokens"]
    assert abs(a["final_metrics"]["valid_loss"] - b["final_metrics"]["valid_loss"]) < 1e-4
    ma, mb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out))
    assert [m["step"] for m in mb] == [1, 2, 3]
    for x, y in zip(ma, mb):
        for k in ("loss", "loss_online"):
            assert (k in x) == (k in y) and abs(x.get(k, 0) - y.get(k, 0)) <= 1e-4 * abs(x.get(k, 0)) + 1e-7, (k, x, y)
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-0000002", "step-0000003"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-0000003").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]


FSDP_SCRIPT = r"""
import functools, json, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from okd.config import build_config
from okd.data import Collator, encode_examples, load_examples
from okd.methods import Models, build_method
from okd.models.loading import load_model, load_tokenizer
from okd.models.online import add_online_module
from okd.train.sharding import head_modules, unsharded_head_params

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = build_config({}, json.loads(sys.argv[1]))
tok = load_tokenizer(cfg.student)
feats, _ = encode_examples(load_examples(cfg.data.train)[:4], tok, cfg.data.template, cfg.data.max_length)
collate = Collator(tok.pad_token_id)
big, shard = collate(feats), collate(feats[rank * 2:(rank + 1) * 2])
n = int((big["labels"][:, 1:] != -100).sum())

def models():
    torch.manual_seed(0)  # the same LoRA initialisation both times
    return load_model(cfg.student).train(), add_online_module(load_model(cfg.teacher), cfg.online).eval()

# one process, the whole batch
s0, t0 = models()
sum(build_method(cfg, Models(s0, t0, tok, len(tok))).losses(big, float(n)).values()).backward()
# FSDP as okd's trainer sets it up under accelerate: both models sharded per decoder layer, the output
# layer (tied to the input embedding) left whole, its gradient averaged by okd; loss / (global count / world)
s1, t1 = models()
unsharded = unsharded_head_params(s1)
kw = dict(auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer}),
          use_orig_params=True, device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy.FULL_SHARD)
fs, ft = FSDP(s1, ignored_modules=head_modules(s1), **kw), FSDP(t1, ignored_modules=head_modules(t1), **kw)
sharded = sum(p.numel() for p in fs.parameters()) < sum(p.numel() for p in s0.parameters())
sum(build_method(cfg, Models(fs, ft, tok, len(tok))).losses(shard, n / world).values()).backward()
for p in unsharded:
    dist.all_reduce(p.grad)
    p.grad /= world
worst = {}
for plain, wrapped in ((s0, fs), (t0, ft)):
    with FSDP.summon_full_params(wrapped, with_grads=True):
        grads = {k.replace("_fsdp_wrapped_module.", ""): p.grad for k, p in wrapped.named_parameters()}
        for k, p in plain.named_parameters():
            if p.requires_grad:
                worst[k] = float((grads[k] - p.grad).abs().max() / (p.grad.abs().max() + 1e-12))
if rank == 0:
    print(json.dumps({"sharded": sharded, "worst": max(worst.values()), "count": len(worst),
                      "lora": sum("lora_" in k for k in worst)}))
dist.destroy_process_group()
"""


def test_fsdp_sharded_student_and_teacher_give_the_big_batch_gradient(base_overrides, tmp_path):
    """accelerate runs FSDP only on accelerators, so this drives torch FSDP (gloo, CPU) directly the
    way okd's trainer asks accelerate to: both models sharded, the output layers left whole
    (sharding.head_modules) with their gradient averaged (sharding.unsharded_head_params); okd's
    chunked losses through the wrapped models give the gradient of one big batch, for the student
    and for the online module."""
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    overrides = [o for o in base_overrides if not o.startswith("output_dir=")] + ["method.name=okd"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(script), json.dumps(overrides)]
    r = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert exited_ok(r) and r.stdout.strip(), r.stderr[-3000:]  # rank 0 printed its result before any exit abort
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["sharded"] and result["lora"] > 0
    assert result["worst"] < 1e-4, result
