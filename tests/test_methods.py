"""The baselines (DESIGN.md §1): every method trains, the on-policy ones on their own samples, and the
pieces with a formula (gkd's endpoints, MiniLLM's single-step term, DistiLLM's schedule) match it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from okd.config import METHODS, build_config
from okd.data import Collator, encode_examples, load_examples
from okd.errors import OkdError
from okd.generation import GenerationResult
from okd.methods import Models, build_method
from okd.models.loading import load_model, load_tokenizer
from okd.train import train

GENERATING = ("seqkd", "imitkd", "gkd", "distillm", "minillm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU their spinning costs
    several times the work (this module: ~15 s on 1 thread vs ~3 min on 2 busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run_overrides(base_overrides, name, **extra):
    """base_overrides for a short run: no validation set (faster), short generations."""
    o = [x for x in base_overrides if not x.startswith("data.valid")]
    if name == "sft":
        o = [x for x in o if not x.startswith("teacher.")]
    return o + [f"method.name={name}", "train.max_steps=2", "method.max_new_tokens=6"] + \
        [f"{k}={v}" for k, v in extra.items()]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _setup(overrides, **extra):
    cfg = build_config({}, overrides + [f"{k}={v}" for k, v in extra.items()])
    tok = load_tokenizer(cfg.student)
    student, teacher = load_model(cfg.student), load_model(cfg.teacher)
    teacher.requires_grad_(False)
    method = build_method(cfg, Models(student=student, teacher=teacher, tokenizer=tok, vocab_size=len(tok)))
    feats, _ = encode_examples(load_examples(cfg.data.train)[:3], tok, cfg.data.template, cfg.data.max_length)
    return cfg, method, student, teacher, tok, Collator(tok.pad_token_id)(feats)


def _capture_inputs(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                    with_kwargs=True)
    return seen


# ----------------------------------------------------------------------------- every method trains

@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_writes_outputs(name, base_overrides):
    extra = {"method.lmbda": 1.0} if name == "gkd" else {}
    if name == "distillm":
        extra = {"method.replay_init_prob": 1.0}  # student data from step 1 (default 0.0 waits for validation)
    out = train(build_config({}, _run_overrides(base_overrides, name, **extra)), progress=False)
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    for f in ("student/config.json", "config.yaml", "summary.json"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == name and summary["steps"] == 2
    if name in GENERATING:
        assert records[-1]["generated_tokens"] > 0 and summary["generated_tokens"] == records[-1]["generated_tokens"]
    else:
        assert "generated_tokens" not in records[-1]


@pytest.mark.parametrize("name", ["jsd", "imitkd"])
def test_divergence_methods_with_online_teacher(name, base_overrides):
    out = train(build_config({}, _run_overrides(base_overrides, name, **{"method.teacher": "online"})),
                progress=False)
    records = _records(out)
    assert all("loss_online" in r for r in records)
    assert (out / "online_module" / "adapter_config.json").is_file()


def test_online_module_options_beyond_the_paper(base_overrides):
    """online.warmup_steps: the module alone trains first (the student's weights do not move); online.lr_schedule
    constant: the module's lr stays online.lr after the shared warm-up; online.kl_weight teacher_miss trains."""
    from safetensors.torch import load_file

    out = train(build_config({}, _run_overrides(
        base_overrides, "okd", **{"train.max_steps": 4, "train.warmup_steps": 1, "online.warmup_steps": 2,
                                  "online.lr_schedule": "constant", "online.lr": 2e-3,
                                  "online.kl_weight": "teacher_miss", "train.save_every": 2,
                                  "train.keep_checkpoints": 3})), progress=False)
    records = _records(out)
    assert [r["lr_online"] for r in records[1:]] == [pytest.approx(2e-3)] * 3  # constant after warm-up
    assert all(torch.isfinite(torch.tensor(r["loss_online"])) for r in records)
    init = load_model(build_config({}, base_overrides).student).state_dict()
    at2 = load_file(str(out / "checkpoints" / "step-0000002" / "student.safetensors"))
    at4 = load_file(str(out / "student" / "model.safetensors"))
    key = next(k for k in at2 if k.endswith("q_proj.weight"))
    assert torch.equal(at2[key], init[key]) and not torch.equal(at4[key], init[key])


@pytest.mark.parametrize("name", ["seqkd", "minillm"])
def test_online_teacher_refused_where_meaningless(name, base_overrides, tmp_path):
    cfg = build_config({}, _run_overrides(base_overrides, name, **{"method.teacher": "online"}))
    with pytest.raises(OkdError, match="does not combine"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- on-policy data

def _fixed_result(n, responses=((65, 66, 67), (68,), (69, 70))):
    seqs = [list(responses[i % len(responses)]) for i in range(n)]
    finished = [i % 2 == 0 for i in range(n)]
    return GenerationResult(seqs, finished, [""] * n, sum(len(s) + f for s, f in zip(seqs, finished)))


@pytest.mark.parametrize("name,extra", [("imitkd", {}), ("gkd", {"method.lmbda": 1.0}),
                                         ("distillm", {"method.replay_init_prob": 1.0})])
def test_on_policy_methods_train_on_student_samples(name, extra, base_overrides, monkeypatch):
    cfg, method, student, teacher, tok, batch = _setup(base_overrides, **{"method.name": name, **extra})
    prompts = [row[:n] for row, n in zip(batch["input_ids"].tolist(), batch["prompt_len"].tolist())]
    fixed = _fixed_result(len(prompts))
    calls = []

    def fake_sample(model, tokenizer, ps, cfg_, **kw):
        calls.append((model, ps))
        return fixed

    monkeypatch.setattr("okd.methods.onpolicy.sample", fake_sample)
    seen_t, seen_s = _capture_inputs(teacher), _capture_inputs(student)
    prepared = method.prepare(batch, 0)
    assert calls and calls[0][0] is student and calls[0][1] == prompts  # the student samples, on these prompts
    losses = method.losses(prepared, 10.0)
    assert torch.isfinite(losses["student"])
    eos = tok.eos_token_id
    expected = [p + s + ([eos] if f else []) for p, s, f in zip(prompts, fixed.sequences, fixed.finished)]
    for captured in (seen_t[-1], seen_s[-1]):  # teacher and student scored exactly these sequences
        rows = [r[:len(e)] for r, e in zip(captured.tolist(), expected)]
        assert rows == expected
    labels = prepared["labels"].tolist()
    for lab, p, e in zip(labels, prompts, expected):  # labels on the response (and its EOS) only
        assert [t for t in lab if t != -100] == e[len(p):]
        assert all(t == -100 for t in lab[:len(p)])
    assert method.metrics["generated_tokens"] == fixed.num_tokens


def test_minillm_trains_on_its_mixed_samples(base_overrides, monkeypatch):
    cfg, method, student, teacher, tok, batch = _setup(base_overrides, **{"method.name": "minillm"})
    n = len(batch["input_ids"])
    targets = [[70, 71, tok.eos_token_id], [72], [73, 74]][:n]
    logs = [[-1.0] * len(t) for t in targets]
    monkeypatch.setattr("okd.methods.minillm.mixed_sample", lambda *a, **k: (targets, logs, logs, logs))
    seen_t = _capture_inputs(teacher)
    prepared = method.prepare(batch, 0)
    method.losses(prepared, 10.0)
    prompts = [row[:k] for row, k in zip(batch["input_ids"].tolist(), batch["prompt_len"].tolist())]
    rows = [r[:len(p) + len(t)] for r, p, t in zip(seen_t[-1].tolist(), prompts, targets)]
    assert rows == [p + t for p, t in zip(prompts, targets)]


def test_gkd_lambda0_beta0_matches_fkd(base_overrides, tmp_path):
    from safetensors.torch import load_file

    common = _run_overrides(base_overrides, "fkd", **{"train.max_steps": 3})
    a = train(build_config({}, common + [f"output_dir={tmp_path / 'fkd'}"]), progress=False)
    b = train(build_config({}, common + ["method.name=gkd", "method.lmbda=0", "method.beta=0",
                                          f"output_dir={tmp_path / 'gkd'}"]), progress=False)
    wa, wb = load_file(a / "student/model.safetensors"), load_file(b / "student/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-7), k
    assert [r["loss"] for r in _records(a)] == pytest.approx([r["loss"] for r in _records(b)], rel=1e-6)


def test_gkd_coin_is_seeded_and_resumable(base_overrides):
    cfg, method, *_ = _setup(base_overrides, **{"method.name": "gkd", "method.lmbda": 0.5})
    method.student_batch = lambda b: {"student": True}
    [method.prepare({}, i) for i in range(3)]
    state = method.state_dict()
    torch.save(state, "/dev/null")
    ahead = [method.prepare({}, i) == {"student": True} for i in range(20)]
    method.load_state_dict(state)
    assert [method.prepare({}, i) == {"student": True} for i in range(20)] == ahead
    assert 0 < sum(ahead) < 20


# ----------------------------------------------------------------------------- seqkd

def test_seqkd_reuses_its_cache(base_overrides, tmp_path):
    cache = tmp_path / "teacher_answers.jsonl"
    common = _run_overrides(base_overrides, "seqkd", **{"method.seqkd_cache": str(cache)})
    first = train(build_config({}, common + [f"output_dir={tmp_path / 'a'}"]), progress=False)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert 1 <= len({x["key"] for x in lines}) == len(lines) <= 8  # 2 steps x 4 prompts, each prompt once
    assert _records(first)[-1]["generated_tokens"] > 0
    second = train(build_config({}, common + [f"output_dir={tmp_path / 'b'}"]), progress=False)
    assert _records(second)[-1]["generated_tokens"] == 0
    assert json.loads((second / "summary.json").read_text())["generated_tokens"] == 0
    assert len(cache.read_text().splitlines()) == len(lines)


def test_seqkd_key_depends_on_teacher_and_settings(base_overrides):
    cfg, method, *_ = _setup(base_overrides, **{"method.name": "seqkd"})
    cfg2, method2, *_ = _setup(base_overrides, **{"method.name": "seqkd", "method.max_new_tokens": 7})
    assert method.key([1, 2, 3]) == method.key([1, 2, 3]) != method.key([1, 2, 4])
    assert method.key([1, 2, 3]) != method2.key([1, 2, 3])


# ----------------------------------------------------------------------------- distillm schedule

def test_distillm_adaptive_schedule_and_replay(base_overrides, monkeypatch):
    cfg, method, *_ = _setup(base_overrides, **{"method.name": "distillm", "method.replay_size": 6,
                                                "method.replay_init_prob": 0.0, "method.replay_step": 0.3,
                                                "method.replay_max_prob": 0.8, "train.max_steps": 100})
    # scheduler: reference first, raise only on a worsening >= eps, reference moves only then
    method.on_validation({"valid_loss": 2.0})
    assert (method.prob, method.ref_loss) == (0.0, 2.0)
    method.on_validation({"valid_loss": 2.05})  # worse, but by less than eps = 0.1
    method.on_validation({"valid_loss": 1.5})  # better: reference stays at 2.0
    assert (method.prob, method.ref_loss) == (0.0, 2.0)
    assert all(method.source(s) == "ground_truth" for s in range(50))  # P = 0: ground truth only
    method.on_validation({"valid_loss": 2.1})
    assert method.prob == pytest.approx(0.3) and method.ref_loss == 2.1
    method.on_validation({"valid_loss": 2.25})
    method.on_validation({"valid_loss": 2.4})
    assert method.prob == pytest.approx(0.8)  # capped at replay_max_prob

    # data: fresh samples until the buffer is full, then replay at the decaying regeneration rate
    method.prob = 1.0
    made = iter(range(1000))
    monkeypatch.setattr(method, "student_samples", lambda ps: [[next(made)] for _ in ps])
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "prompt_len": torch.tensor([2, 2])}
    out = method.prepare(dict(batch), 0)
    assert method.metrics["fresh_batches"] == 1 and len(method.buffer) == 2
    assert out["labels"][:, 2].tolist() == [0, 1]  # trained on the fresh samples
    while len(method.buffer) < 6:
        method.prepare(dict(batch), 0)
    assert [t for _, t in method.buffer] == [[k] for k in range(6)]
    kinds = [method.source(50) for _ in range(4000)]  # P·(1 − 50/100) = 0.5 fresh, the rest replay
    assert kinds.count("ground_truth") == 0 and 0.45 < kinds.count("fresh") / 4000 < 0.55
    kinds = [method.source(99) for _ in range(500)]
    assert kinds.count("replay") > 480
    replayed = method.prepare(dict(batch), 100)  # at the end nothing is regenerated
    assert method.metrics["replay_batches"] == 1
    drawn = [row[2] for row in replayed["input_ids"].tolist()]
    assert len(set(drawn)) == 2 and set(drawn) <= set(range(6))  # two distinct buffer entries

    method.buffer.extend(zip([[1]] * 4, [[100 + k] for k in range(4)]))
    assert len(method.buffer) == 6 and [t for _, t in method.buffer][-4:] == [[100], [101], [102], [103]]
    state = method.state_dict()
    import io

    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    restored = torch.load(f, weights_only=True)
    cfg2, other, *_ = _setup(base_overrides, **{"method.name": "distillm", "method.replay_size": 6,
                                               "train.max_steps": 100})
    other.load_state_dict(restored)
    assert list(other.buffer) == [(list(p), list(t)) for p, t in method.buffer]
    assert (other.prob, other.ref_loss) == (method.prob, method.ref_loss)
    assert [other.source(10) for _ in range(20)] == [method.source(10) for _ in range(20)]


# ----------------------------------------------------------------------------- minillm

def test_minillm_single_step_term_is_exact_reverse_kl():
    from okd.methods.minillm import token_objective

    torch.manual_seed(0)
    zs = (3 * torch.randn(7, 50, dtype=torch.float64)).requires_grad_()
    zt = 3 * torch.randn(7, 50, dtype=torch.float64)
    y = torch.randint(0, 50, (7,))
    zero = torch.zeros(7, dtype=torch.float64)
    single, pg = token_objective(zs, zt, y, zero, zero, 0.2)
    q, p = torch.softmax(zs, -1), torch.softmax(zt, -1)
    exact = (q * (q.log() - p.log())).sum(-1)
    assert torch.allclose(single, exact, rtol=1e-10)
    assert torch.equal(pg, torch.zeros_like(pg))  # zero advantage: no policy-gradient term
    (g1,) = torch.autograd.grad(single.sum(), zs)
    (g2,) = torch.autograd.grad(exact.sum(), zs)
    assert torch.allclose(g1, g2, rtol=1e-8)


def test_minillm_loss_on_a_rollout(base_overrides):
    """Through the model: with zero advantages the loss is Σ_t KL(q_t‖p_t) over the response."""
    cfg, method, student, teacher, tok, batch = _setup(base_overrides, **{"method.name": "minillm",
                                                                          "method.max_new_tokens": 5,
                                                                          "train.loss_chunk_size": 3})
    prepared = method.prepare(batch, 0)
    prepared["advantages"] = torch.zeros_like(prepared["advantages"])
    loss = method.losses(prepared, 1.0)["student"]
    mask = prepared["labels"][:, 1:] != -100
    ids, am = prepared["input_ids"], prepared["attention_mask"]
    with torch.no_grad():
        zt = teacher(input_ids=ids, attention_mask=am).logits[:, :-1][mask]
    zs = student(input_ids=ids, attention_mask=am).logits[:, :-1][mask]
    log_q, log_p = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
    exact = (log_q.exp() * (log_q - log_p)).sum()
    assert torch.allclose(loss, exact, rtol=1e-5)


def test_minillm_policy_gradient_and_clip(base_overrides):
    from okd.methods.minillm import normalised_returns, token_objective

    assert normalised_returns([1.0, 2.0, 3.0, 6.0]) == pytest.approx([11 / 3, 9 / 2, 6.0, 0.0])
    zs = torch.zeros(2, 4, requires_grad=True)  # q uniform: log q(y) = log 1/4
    zt = torch.zeros(2, 4)
    y = torch.tensor([0, 1])
    old = torch.full((2,), -torch.log(torch.tensor(4.0)).item())
    adv = torch.tensor([1.0, 1.0])
    # ratio = q/p̃: inside the clip range for row 0, far above it for row 1 (p̃ small there)
    log_mix = torch.stack([old[0], old[1] - 1.0])
    _, pg = token_objective(zs, zt, y, log_mix, adv, 0.2)
    assert pg[0].item() == pytest.approx(-1.0) and pg[1].item() == pytest.approx(-1.2)  # −A·clip(ratio)
    (g,) = torch.autograd.grad(pg.sum(), zs)
    assert g[1].abs().sum() == 0  # clipped: no gradient
    assert torch.allclose(g[0], -(F.one_hot(y[0], 4) - 0.25))  # −A ∇ log q(y)


def test_mixed_sampler_matches_full_forward(tiny_dirs):
    """The token-by-token sampler with KV caches and left padding records the right log-probs."""
    from okd.methods.minillm import mixed_sample

    student, teacher = load_model_dir(tiny_dirs["student"]), load_model_dir(tiny_dirs["teacher"])
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    student.train()
    torch.manual_seed(0)
    targets, log_mix, log_q, log_p = mixed_sample(student, teacher, prompts, alpha=0.2, max_new_tokens=6,
                                                  eos_ids=[256], pad_id=257, vocab_size=260)
    for p, t, lm, lq, lp in zip(prompts, targets, log_mix, log_q, log_p):
        assert 1 <= len(t) <= 6
        ids = torch.tensor([p + t])
        with torch.no_grad():
            q = F.log_softmax(student(input_ids=ids).logits[0, len(p) - 1:-1], -1)
            pp = F.log_softmax(teacher(input_ids=ids).logits[0, len(p) - 1:-1], -1)
        idx = torch.tensor(t)[:, None]
        assert torch.allclose(torch.tensor(lq), q.gather(1, idx).squeeze(1), atol=1e-4)
        assert torch.allclose(torch.tensor(lp), pp.gather(1, idx).squeeze(1), atol=1e-4)
        mix = torch.log(0.2 * pp.exp() + 0.8 * q.exp()).gather(1, idx).squeeze(1)
        assert torch.allclose(torch.tensor(lm), mix, atol=1e-4)
    assert student.training and not teacher.training  # modes restored


def load_model_dir(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_minillm_reuses_rollouts_for_ppo_epochs(base_overrides, monkeypatch):
    cfg, method, student, teacher, tok, batch = _setup(base_overrides, **{"method.name": "minillm",
                                                                          "method.ppo_epochs": 2})
    calls = []
    n = len(batch["input_ids"])

    def fake(*a, **k):
        calls.append(1)
        t = [[70 + len(calls)]] * n
        return t, [[-1.0]] * n, [[-1.5]] * n, [[-2.0]] * n

    monkeypatch.setattr("okd.methods.minillm.mixed_sample", fake)
    first = method.prepare(batch, 0)
    again = method.prepare(batch, 1)
    fresh = method.prepare(batch, 2)
    assert len(calls) == 2 and torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], fresh["input_ids"])


# ----------------------------------------------------------------------------- resume

# parameters chosen so the restored state matters at step 4 (coin 4 differs from coin 1; distillm
# replays from a full buffer; minillm reuses step 3's rollouts)
@pytest.mark.parametrize("name,extra", [
    ("gkd", {"method.lmbda": 0.9}),
    ("distillm", {"method.replay_init_prob": 1.0, "method.replay_size": 4, "train.seed": 2}),
    ("minillm", {"method.ppo_epochs": 2}),
])
def test_generating_methods_resume_exactly(name, extra, base_overrides, tmp_path):
    """A run resumed from its step-3 checkpoint ends with the weights of the uninterrupted run:
    sampler RNG, gkd's coin, distillm's buffer and schedule, minillm's reused rollouts all restored."""
    import shutil

    from safetensors.torch import load_file

    common = _run_overrides(base_overrides, name, **{"train.max_steps": 4, "train.save_every": 3, **extra})
    full = train(build_config({}, common + [f"output_dir={tmp_path / 'full'}"]), progress=False)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000003", part / "checkpoints" / "step-0000003")
    resumed = train(build_config({}, common + [f"output_dir={part}"]), resume=True, progress=False)
    wa, wb = load_file(full / "student/model.safetensors"), load_file(resumed / "student/model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _records(resumed)[-1]["generated_tokens"] == _records(full)[-1]["generated_tokens"]
