"""The core: OKD losses against their formula, the online module, the training loop and its outputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from okd.config import build_config
from okd.data import Collator, encode_examples, load_examples
from okd.methods import Models, build_method
from okd.models.loading import load_model, load_tokenizer
from okd.models.online import add_online_module
from okd.train import train


def _setup(overrides, **extra):
    cfg = build_config({}, overrides + [f"{k}={v}" for k, v in extra.items()])
    tok = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    teacher = load_model(cfg.teacher)
    if cfg.method.resolved_teacher == "online":
        teacher = add_online_module(teacher, cfg.online)
    teacher.eval()
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tok, vocab_size=len(tok)))
    feats, _ = encode_examples(load_examples(cfg.data.train)[:4], tok, cfg.data.template, cfg.data.max_length)
    batch = Collator(tok.pad_token_id)(feats)
    return cfg, method, student, teacher, batch


def _grads(params):
    return [p.grad.clone() if p.grad is not None else None for p in params]


def test_okd_losses_match_formula(base_overrides):
    """Chunked OKD losses and their routed gradients equal a direct full-logits computation."""
    cfg, method, student, teacher, batch = _setup(
        base_overrides, **{"method.name": "okd", "online.alpha": 0.3, "method.temperature": 2.0,
                           "train.loss_chunk_size": 7})
    labels = batch["labels"]
    n = int((labels[:, 1:] != -100).sum())
    losses = method.losses(batch, float(n))
    (losses["student"] + losses["online"]).backward()
    s_params = [p for p in student.parameters() if p.requires_grad]
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    g_s, g_t = _grads(s_params), _grads(t_params)
    student.zero_grad(), teacher.zero_grad()

    # the same thing, written directly from DESIGN.md §1 with full logits and explicit detaches
    tau, alpha = 2.0, 0.3
    mask = labels[:, 1:] != -100
    zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    y = labels[:, 1:][mask]
    log_p, log_q = F.log_softmax(zt / tau, -1), F.log_softmax(zs / tau, -1)
    p, q = log_p.exp(), log_q.exp()
    ls = tau**2 * (p.detach() * (log_p.detach() - log_q)).sum(-1).mean()
    kl_q_p = (q.detach() * (log_q.detach() - log_p)).sum(-1)
    lt = (alpha * tau**2 * kl_q_p + (1 - alpha) * F.cross_entropy(zt, y, reduction="none")).mean()
    assert torch.allclose(losses["student"], ls, rtol=1e-5)
    assert torch.allclose(losses["online"], lt, rtol=1e-5)
    (ls + lt).backward()
    for a, b in zip(g_s, _grads(s_params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    for a, b in zip(g_t, _grads(t_params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_module_gradients_reach_only_lora(base_overrides):
    cfg, method, student, teacher, batch = _setup(base_overrides, **{"method.name": "okd"})
    losses = method.losses(batch, 10.0)
    losses["online"].backward()
    with_grad = {n for n, p in teacher.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert not any(p.requires_grad for n, p in teacher.named_parameters() if "lora_" not in n)
    # the student loss sends nothing into the teacher, and the module loss nothing into the student
    assert all(p.grad is None or not p.grad.any() for p in student.parameters())


def test_fkd_frozen_teacher_loss_is_forward_kl(base_overrides):
    cfg, method, student, teacher, batch = _setup(base_overrides, **{"method.name": "fkd"})
    mask = batch["labels"][:, 1:] != -100
    n = int(mask.sum())
    loss = method.losses(batch, float(n))["student"]
    with torch.no_grad():
        zs = student(input_ids=batch["input_ids"]).logits[:, :-1][mask]
        zt = teacher(input_ids=batch["input_ids"]).logits[:, :-1][mask]
    expected = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), log_target=True, reduction="sum") / n
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def _fixed_batch_loss(student_dir, base_overrides, method_name="sft"):
    cfg, method, student, teacher, batch = _setup(base_overrides, **{"method.name": method_name,
                                                                     "student.path": student_dir})
    with torch.no_grad():
        n = int((batch["labels"][:, 1:] != -100).sum())
        return float(method.losses(batch, float(n))["student"])


@pytest.mark.parametrize("name", ["sft", "fkd", "okd"])
def test_training_lowers_loss_and_writes_outputs(name, base_overrides, tiny_dirs, tmp_path):
    overrides = base_overrides + [f"method.name={name}", "train.max_steps=12", "train.save_every=5"]
    if name == "sft":
        overrides = [o for o in overrides if not o.startswith("teacher.")]
    before = _fixed_batch_loss(str(tiny_dirs["student"]), base_overrides, "sft" if name == "sft" else "fkd")
    teacher_before = {k: v.clone() for k, v in load_model(build_config({}, base_overrides).teacher).state_dict().items()}
    out = train(build_config({}, overrides), progress=False)

    after = _fixed_batch_loss(str(out / "student"), base_overrides, "sft" if name == "sft" else "fkd")
    assert after < before

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    for r in records:
        assert {"step", "loss", "lr", "elapsed_s", "tokens"} <= r.keys()
    assert "valid_loss" in records[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == name and summary["steps"] == 12 and summary["tokens_per_s"] > 0
    assert (out / "config.yaml").is_file() and (out / "checkpoints").is_dir()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "student")
    AutoTokenizer.from_pretrained(out / "student")
    assert not list((out / "student").glob("*.bin"))  # safetensors only
    if name == "okd":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(tiny_dirs["teacher"])
        adapted = PeftModel.from_pretrained(base, out / "online_module")
        assert any("lora_" in n for n, _ in adapted.named_parameters())
        # the online module learned something: it changes the teacher's output
        x = torch.tensor([[1, 2, 3, 4]])
        plain = AutoModelForCausalLM.from_pretrained(tiny_dirs["teacher"])
        assert not torch.allclose(adapted(x).logits, plain(x).logits)
        # and the teacher's base weights on disk are untouched
        for k, v in plain.state_dict().items():
            assert torch.equal(v, teacher_before[k])
    else:
        assert not (out / "online_module").exists()


def test_teacher_base_weights_unchanged_in_memory(base_overrides):
    cfg, method, student, teacher, batch = _setup(base_overrides, **{"method.name": "okd"})
    base = {n: p.detach().clone() for n, p in teacher.named_parameters() if "lora_" not in n}
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        losses = method.losses(batch, 10.0)
        losses["online"].backward()
        opt.step()
        opt.zero_grad()
    for n, p in teacher.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


def test_gradient_accumulation_matches_big_batch(base_overrides, tmp_path):
    """4 × 1 and 2 × 2 (batch × accumulation) give the same weights: loss normalised per step."""
    common = base_overrides + ["method.name=okd", "train.max_steps=2", "data.group_by_length=false",
                               "train.max_grad_norm=0"]
    a = train(build_config({}, common + ["train.batch_size=4", f"output_dir={tmp_path / 'a'}"]), progress=False)
    b = train(build_config({}, common + ["train.batch_size=2", "train.grad_accum=2",
                                          f"output_dir={tmp_path / 'b'}"]), progress=False)
    from safetensors.torch import load_file

    for f in ("student/model.safetensors", "online_module/adapter_model.safetensors"):
        wa, wb = load_file(a / f), load_file(b / f)
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), (f, k)


def test_existing_run_is_not_overwritten(base_overrides):
    cfg = build_config({}, base_overrides + ["method.name=fkd", "train.max_steps=1"])
    train(cfg, progress=False)
    from okd.errors import OkdError

    with pytest.raises(OkdError, match="--resume"):
        train(cfg, progress=False)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_okd_trains_other_architectures(arch, tiny_data, tmp_path):
    """GPT-2's fused c_attn (Conv1D, fan_in_fan_out) and Qwen2's q/v projections take the module."""
    from okd.models.tiny import save_tiny

    t = save_tiny(tmp_path / "t", arch, layers=3, hidden=64, seed=1)
    s = save_tiny(tmp_path / "s", arch, layers=2, hidden=32, seed=2)
    out = train(build_config({}, [f"teacher.path={t}", f"student.path={s}", f"data.train={tiny_data}",
                                  "method.name=okd", "online.rank=4", "online.layers=2", "train.max_steps=2",
                                  "train.batch_size=4", "data.max_length=96", f"output_dir={tmp_path / 'run'}"]),
                progress=False)
    import json as _json

    cfg = _json.loads((out / "online_module" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1, 2]
    assert set(cfg["target_modules"]) == ({"c_attn"} if arch == "gpt2" else {"q_proj", "v_proj"})


@pytest.mark.parametrize("layers, n, expected", [(0.25, 30, list(range(22, 30))), (0.25, 4, [3]), (0.5, 3, [1, 2]),
                                                 (0.99, 4, [0, 1, 2, 3]), (8, 30, list(range(22, 30)))])
def test_online_layers_as_a_share_of_the_depth(layers, n, expected):
    """online.layers = f in (0, 1): the top ceil(f·n) layers, so one setting fits teachers of any depth."""
    from types import SimpleNamespace

    from okd.config import OnlineConfig
    from okd.models.online import layer_indices

    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=n, model_type="llama"))
    assert layer_indices(model, OnlineConfig(layers=layers)) == expected


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_online_layers_share_out_of_range_is_one_line(bad):
    from okd.errors import OkdError

    with pytest.raises(OkdError, match=r"online.layers': .* neither a number of top layers .* nor a share"):
        build_config({"online": {"layers": bad}})


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, capsys):
    """`okd demo --tiny`: teacher fine-tuned, three methods trained, five models evaluated, report."""
    from okd.demo import run_demo

    out = run_demo(tmp_path, tiny=True, steps=20, eval_limit=8)
    report = (out / "report.md").read_text()
    for label in ("teacher", "student (untrained)", "sft", "fkd", "okd"):
        assert f"| {label} |" in report
    assert "ROUGE-L" in capsys.readouterr().out


def test_runs_with_different_precision_in_one_process(base_overrides, tmp_path):
    """okd demo trains several models in one process (on a GPU: a bf16 teacher warm-up, then fp32
    students); accelerate keeps its state per process and used to refuse the second setting."""
    common = base_overrides + ["method.name=sft", "train.max_steps=1"]
    for i, mp in enumerate(("no", "bf16", "no")):
        out = train(build_config({}, common + [f"train.mixed_precision={mp}", f"output_dir={tmp_path / str(i)}"]),
                    progress=False)
        assert (out / "summary.json").exists()


def test_train_time_excludes_validation_and_checkpoints(base_overrides, tmp_path, monkeypatch):
    """summary train_s (and tokens/s) leave out the loop's validations and checkpoint saves."""
    import time

    import okd.train.trainer as trainer

    real = trainer.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", slow_evaluate)
    out = train(build_config({}, base_overrides + ["method.name=sft", "train.max_steps=3", "train.eval_every=1",
                                                   "train.save_every=1", f"output_dir={tmp_path / 'r'}"]),
                progress=False)
    s = json.loads((out / "summary.json").read_text())
    # the validations after steps 1 and 2 ran inside the timed loop (the one after step 3 after it)
    assert s["wall_clock_s"] - s["train_s"] >= 0.8
    # tokens/s from train_s (which summary.json rounds to 0.01 s), not from the wall clock
    assert s["tokens"] / (s["train_s"] + 0.006) <= s["tokens_per_s"] <= s["tokens"] / max(s["train_s"] - 0.006, 1e-9)
    assert s["tokens_per_s"] > s["tokens"] / s["wall_clock_s"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_s"] <= r["elapsed_s"] for r in records)


@pytest.mark.parametrize("method", ["sft", "okd"])
def test_select_by_valid_loss_keeps_the_best_validation_weights(method, base_overrides, tmp_path, monkeypatch):
    """train.select_by=valid_loss: student/ (and online_module/) hold the weights of the validation with the
    lowest valid CE (scripted here: step 2 of 4), which equal that step's checkpoint; summary.json names it."""
    from safetensors.torch import load_file

    import okd.train.trainer as trainer

    real, scripted = trainer.evaluate, iter([3.0, 1.0, 2.0, 1.5])

    def scripted_evaluate(run):
        return {**real(run), "valid_loss": next(scripted)}

    monkeypatch.setattr(trainer, "evaluate", scripted_evaluate)
    out = train(build_config({}, base_overrides + [f"method.name={method}", "train.max_steps=4", "train.eval_every=1",
                                                   "train.save_every=1", "train.keep_checkpoints=10",
                                                   "train.select_by=valid_loss", f"output_dir={tmp_path / 'r'}"]),
                progress=False)
    s = json.loads((out / "summary.json").read_text())
    assert s["selected"] == {"metric": "valid_loss", "value": 1.0, "step": 2} and s["steps"] == 4
    assert not (out / "best").exists()
    kept = load_file(out / "student" / "model.safetensors")
    step2, last = (load_file(out / "checkpoints" / f"step-000000{i}" / "student.safetensors") for i in (2, 4))
    shared = [k for k in kept if k in step2]
    assert len(shared) >= len(kept) - 1  # (a tied output layer may be saved once)
    assert all(torch.equal(kept[k], step2[k]) for k in shared)
    assert not all(torch.equal(kept[k], last[k]) for k in shared)
    assert "weights selected by valid_loss" in (out / "student" / "README.md").read_text()
    if method == "okd":
        assert (out / "online_module" / "adapter_model.safetensors").is_file()


def test_select_by_needs_its_validation():
    from okd.errors import OkdError

    with pytest.raises(OkdError, match="train.select_by=valid_loss chooses the weights by validation"):
        build_config({}, ["train.select_by=valid_loss"])
    with pytest.raises(OkdError, match="needs train.eval_rouge=true"):
        build_config({}, ["train.select_by=valid_rougeL", "data.valid=x.jsonl"])
