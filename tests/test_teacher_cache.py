"""Frozen-teacher cache (issue 16): build / open / validate / look up, the top-k + tail losses, the method
that trains from the cache, the `okd teacher cache` command and its one-line errors."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from okd.config import build_config
from okd.data import Collator
from okd.errors import OkdError
from okd.losses import token_divergence
from okd.methods.base import Models, Scored, head, scored_hidden
from okd.methods.cached import CachedTeacherKD, check_cache_method
from okd.methods.kd import FrozenTeacherKD
from okd.models.loading import load_model, load_tokenizer
from okd.models.teacher_cache import build_cache, describe_config, open_cache, validate_cache
from okd.train import train
from okd.losses.topk import SparseFKLClosedForm, sparse_teacher, sparse_token_divergence

KINDS = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _overrides(tiny_dirs, data, **extra):
    o = {"teacher.path": tiny_dirs["teacher"], "student.path": tiny_dirs["student"], "data.train": data,
         "data.max_length": 128, "method.name": "fkd", "train.loss_chunk_size": 16}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def _load_split():
    from okd.train.setup import load_split

    return load_split


@pytest.fixture(scope="module")
def env(tiny_dirs, tiny_data):
    cfg = build_config({}, _overrides(tiny_dirs, tiny_data))
    tok = load_tokenizer(cfg.student)
    teacher = load_model(cfg.teacher).requires_grad_(False)
    features = _load_split()(cfg, cfg.data.train, "train", tok, None, False)[1]
    return {"cfg": cfg, "tok": tok, "teacher": teacher, "features": features, "V": len(tok)}


def _build(env, out, k, **kw):
    kw.setdefault("shard_examples", 10)
    return build_cache(out, teacher=env["teacher"], tokenizer=env["tok"], splits={"train": env["features"]},
                       depends_on=describe_config(env["cfg"], env["tok"]), vocab_size=env["V"], top_k=k,
                       progress=False, device="cpu", **kw)


@pytest.fixture(scope="module")
def full_cache(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "full"
    _build(env, out, env["V"], value_dtype="float32")
    return out


@pytest.fixture(scope="module")
def small_cache(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "k8"
    _build(env, out, 8, temperatures=(2.0,))
    return out


def _batch(env, idx):
    feats = [dict(env["features"][i], example_index=i) for i in idx]
    return Collator(env["tok"].pad_token_id)(feats)


def _student(tiny_dirs):
    return load_model(build_config({}, [f"student.path={tiny_dirs['student']}"]).student).train()


def _loss_and_grads(method, batch):
    loss = method.losses(batch, 7.0)["student"]
    params = [p for p in method.models.student.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


# ----------------------------------------------------------------------------- exactness at k = V

@pytest.mark.parametrize("kind,extra", [(k, {}) for k in KINDS] + [
    ("fkl", {"method.temperature": 2.0, "method.ce_weight": 0.5}),
    ("jsd", {"method.temperature": 0.7, "method.beta": 0.3, "method.ce_weight": 0.2}),
    ("jsd", {"method.beta": 0.0}), ("srkl", {"method.temperature": 2.0, "method.alpha": 0.3})])
def test_full_vocab_cache_equals_live_teacher(kind, extra, env, full_cache, tiny_dirs, tiny_data):
    cfg = build_config({}, _overrides(tiny_dirs, tiny_data, **{"method.divergence": kind, **extra}))
    student = _student(tiny_dirs)
    live = FrozenTeacherKD(cfg=cfg, models=Models(student, env["teacher"], env["tok"], env["V"]))
    models = Models(student, None, env["tok"], env["V"])
    models.teacher_cache = open_cache(full_cache)
    cached = CachedTeacherKD(cfg=cfg, models=models)
    batch = _batch(env, [3, 17, 0, 25, 9])
    l_live, g_live = _loss_and_grads(live, batch)
    l_cache, g_cache = _loss_and_grads(cached, batch)
    torch.testing.assert_close(l_cache, l_live, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_cache, g_live):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the top-k + tail estimator

def _bucketed(logits, ids, tau):
    """log p̂ over (ids, tail) from full logits at temperature tau: the exact bucketed distribution."""
    logp = F.log_softmax(logits / tau, -1)
    tail = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), -1, keepdim=True)
    return torch.cat([logp.gather(-1, ids), tail], -1)


def test_top_k_buckets_are_exact_at_stored_temperatures_and_bound_the_loss(env, small_cache):
    cache = open_cache(small_cache)
    assert cache.top_k == 8 and cache.tail_temperatures == [1.0, 2.0]
    batch = _batch(env, [1, 2, 30])
    scored = Scored.from_labels(batch["labels"])
    with torch.no_grad():
        zt = scored_hidden(env["teacher"], batch, scored) @ head(env["teacher"], env["V"]).t()
    ids, logp, log_tail = cache.lookup("train", batch["example_index"])
    assert ids.shape == (scored.targets.shape[0], 8) and (ids == zt.topk(8, -1).indices).all()
    zs = torch.randn(ids.shape[0], env["V"]) * 2
    for tau in (1.0, 2.0):
        t = sparse_teacher(ids, logp, log_tail, vocab_size=env["V"], temperatures=cache.tail_temperatures,
                           temperature=tau)
        torch.testing.assert_close(t.log_buckets, _bucketed(zt, ids, tau), atol=3e-3, rtol=1e-3)  # fp16 storage
        for kind in KINDS:
            sparse = sparse_token_divergence(kind, zs, ids, t.log_buckets, True, temperature=tau)
            full = token_divergence(kind, zs, zt, temperature=tau)
            assert torch.isfinite(sparse).all() and (sparse <= full + 1e-3).all(), kind  # data processing


def test_unstored_temperature_is_refused(small_cache, env, tiny_dirs, tiny_data, tmp_path):
    """A cache without the tail mass at the run's τ cannot give its loss (the one-token tail was 130x off at τ = 2):
    refused by the loss and, before anything is written, by okd train; a stored τ trains."""
    cache = open_cache(small_cache)
    ids, logp, log_tail = cache.lookup("train", [4])
    with pytest.raises(OkdError, match=r"holds the teacher's tail mass at τ = 1, 2 only, not at method.temperature=3"):
        sparse_teacher(ids, logp, log_tail, vocab_size=env["V"], temperatures=cache.tail_temperatures, temperature=3.0)
    from okd.train import train

    out = tmp_path / "run"
    args = _overrides(tiny_dirs, tiny_data, **{"teacher.cache": str(small_cache), "method.temperature": 3.0,
                                               "output_dir": str(out), "train.max_steps": 1})
    with pytest.raises(OkdError, match=r"teacher.cache '.*' holds the teacher's tail mass at τ = 1, 2 only, not at "
                                       r"method.temperature=3 .*--temperature 3"):
        train(build_config({}, args), progress=False)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("tau,has_tail,ce", [(1.0, True, 0.0), (2.0, True, 0.5), (0.5, False, 0.3), (1.0, False, 0.4)])
def test_sparse_fkl_closed_form_matches_autograd(tau, has_tail, ce):
    torch.manual_seed(0)
    n, V, k = 6, 40, (8 if has_tail else 40)
    zt, zs = torch.randn(n, V, dtype=torch.float64) * 3, torch.randn(n, V, dtype=torch.float64, requires_grad=True)
    ids = zt.topk(k, -1).indices
    lb = _bucketed(zt, ids, tau) if has_tail else F.log_softmax(zt / tau, -1).gather(-1, ids)
    from okd.losses.topk import SparseTeacher

    teacher, y = SparseTeacher(ids, lb, has_tail), torch.randint(0, V, (n,))
    rows = torch.arange(n)
    loss, _, g, _ = SparseFKLClosedForm(teacher, y, temperature=tau, scale=tau**2, ce_weight=ce).with_grads(zs.detach(), None, rows)
    ref = tau**2 * sparse_token_divergence("fkl", zs, ids, lb, has_tail, temperature=tau)
    ref = ref + ce * F.cross_entropy(zs, y, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), zs)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6)


def test_cached_method_trains_from_a_small_cache(env, small_cache, tiny_dirs, tiny_data):
    for kind in KINDS:
        cfg = build_config({}, _overrides(tiny_dirs, tiny_data, **{"method.divergence": kind}))
        models = Models(_student(tiny_dirs), None, env["tok"], env["V"])
        models.teacher_cache = open_cache(small_cache)
        loss, grads = _loss_and_grads(CachedTeacherKD(cfg=cfg, models=models), _batch(env, [5, 6]))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), kind


# ----------------------------------------------------------------------------- building: layout, resume

def test_manifest_records_what_the_cache_depends_on(small_cache, env):
    m = json.loads((small_cache / "manifest.json").read_text())
    dep = m["depends_on"]
    assert len(dep["teacher"]["weights_sha256"]) == 64 and len(dep["tokenizer_sha256"]) == 64
    assert dep["template"] == "alpaca" and dep["max_length"] == 128 and dep["data"]["train"]["sha256"]
    assert m["top_k"] == 8 and m["vocab_size"] == env["V"] and m["id_dtype"] == "uint16"
    shards = m["splits"]["train"]["shards"]
    assert [(s["start"], s["end"]) for s in shards] == [(0, 10), (10, 20), (20, 30), (30, 32)]
    assert sum(s["tokens"] for s in shards) == m["tokens"] == sum(int((torch.tensor(f["labels"][1:]) != -100).sum())
                                                                 for f in env["features"])
    assert m["bytes_per_token"] < 8 * 4 + 8 + 16  # ids uint16 + logp fp16 + two fp32 tails (+ headers)
    assert not (small_cache / "build.json").exists()


def test_build_resumes_after_a_kill_and_skips_complete_shards(env, tmp_path, monkeypatch):
    import okd.models.teacher_cache as tc

    real, calls = tc._score_examples, []

    def dying(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while scoring the third shard
        return real(*a, **kw)

    monkeypatch.setattr(tc, "_score_examples", dying)
    with pytest.raises(KeyboardInterrupt):
        _build(env, tmp_path / "c", 8)
    assert (tmp_path / "c/build.json").exists() and not (tmp_path / "c/manifest.json").exists()
    with pytest.raises(OkdError, match="unfinished"):
        open_cache(tmp_path / "c")
    calls.clear()
    monkeypatch.setattr(tc, "_score_examples", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    resumed = _build(env, tmp_path / "c", 8)
    assert len(calls) == 2  # shards 3 and 4 only
    fresh = _build(env, tmp_path / "fresh", 8)
    assert [s["sha256"] for s in resumed["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in fresh["splits"]["train"]["shards"]]
    calls.clear()
    _build(env, tmp_path / "c", 8)  # complete: nothing recomputed
    assert not calls
    with pytest.raises(OkdError, match="another --top-k"):
        _build(env, tmp_path / "c", 16)


# ----------------------------------------------------------------------------- bad input, one line each

def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_missing_directory_and_not_a_cache(tmp_path):
    with pytest.raises(OkdError) as e:
        open_cache(tmp_path / "nope")
    _one_line(e, "does not exist", "okd teacher cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OkdError) as e:
        open_cache(tmp_path / "empty")
    _one_line(e, "not a teacher cache")


def test_truncated_or_missing_shard_is_named_and_a_rerun_repairs_it(small_cache, env, tmp_path, monkeypatch):
    copy = tmp_path / "c"
    shutil.copytree(small_cache, copy)
    shard = copy / "train-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(OkdError) as e:
        open_cache(copy)
    _one_line(e, "train-00001.safetensors", "cut short")
    shard.unlink()
    with pytest.raises(OkdError) as e:
        open_cache(copy)
    _one_line(e, "train-00001.safetensors", "missing", "rerun")
    import okd.models.teacher_cache as tc

    real, calls = tc._score_examples, []
    monkeypatch.setattr(tc, "_score_examples", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    _build(env, copy, 8, temperatures=(2.0,))  # the same build again: rewrites the lost shard only
    assert len(calls) == 1 and open_cache(copy).examples("train") == 32
    assert shard.read_bytes() == (small_cache / shard.name).read_bytes()


def test_manifest_from_another_teacher_tokenizer_or_settings(small_cache, env, tiny_dirs, tiny_data):
    cache = open_cache(small_cache)
    validate_cache(cache, env["cfg"], env["tok"], vocab_size=env["V"])  # the config it was built for
    other = build_config({}, _overrides(tiny_dirs, tiny_data, **{"teacher.path": tiny_dirs["student"]}))
    with pytest.raises(OkdError) as e:
        validate_cache(cache, other, env["tok"])
    _one_line(e, "teacher", "okd teacher cache")
    for key, value in (("data.template", "plain"), ("data.max_length", 64)):
        with pytest.raises(OkdError) as e:
            validate_cache(cache, build_config({}, _overrides(tiny_dirs, tiny_data, **{key: value})), env["tok"])
        _one_line(e, key)
    tok = load_tokenizer(env["cfg"].student)
    tok.chat_template = "{{ messages }}"
    with pytest.raises(OkdError) as e:
        validate_cache(cache, env["cfg"], tok)
    _one_line(e, "tokenizer")


def test_cache_built_on_other_data(small_cache, env, tiny_dirs, tiny_data, uneven_data):
    cache = open_cache(small_cache)
    with pytest.raises(OkdError) as e:
        validate_cache(cache, build_config({}, _overrides(tiny_dirs, uneven_data)), env["tok"])
    _one_line(e, "data.train")
    cache.check_features("train", env["features"])
    cache.check_features("train", env["features"][:7])  # data.train_limit: a prefix is the same data
    cfg = build_config({}, _overrides(tiny_dirs, uneven_data))
    other = _load_split()(cfg, cfg.data.train, "train", env["tok"], None, False)[1]
    with pytest.raises(OkdError) as e:
        cache.check_features("train", other)
    _one_line(e, "other data", "example 0")
    with pytest.raises(OkdError) as e:
        cache.check_features("train", env["features"] + env["features"][:1])
    _one_line(e, "other data", "33")


# ----------------------------------------------------------------------------- the command

def _cli(argv):
    from okd.cli import teacher

    parser = argparse.ArgumentParser(prog="okd")
    teacher.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("k,words", [("0", ["--top-k", "positive"]), ("261", ["--top-k 261", "260 tokens"]),
                                     ("many", ["--top-k", "'many'"])])
def test_top_k_out_of_range(k, words, tiny_dirs, tiny_data, tmp_path):
    with pytest.raises(OkdError) as e:
        _cli(["teacher", "cache", "-o", str(tmp_path / "c"), "--top-k", k, *_overrides(tiny_dirs, tiny_data)])
    _one_line(e, *words)
    assert not (tmp_path / "c").exists()


def test_command_builds_and_the_rerun_is_a_no_op(tiny_dirs, tiny_data, tmp_path, capsys):
    argv = ["teacher", "cache", "-o", str(tmp_path / "c"), "--top-k", "4", "--quiet",
            *_overrides(tiny_dirs, tiny_data, **{"data.valid": tiny_data, "data.valid_limit": 5})]
    assert _cli(argv) == 0
    m = json.loads((tmp_path / "c/manifest.json").read_text())
    assert m["top_k"] == 4 and m["splits"]["valid"]["examples"] == 5 and m["splits"]["train"]["examples"] == 32
    before = (tmp_path / "c/manifest.json").read_text()
    assert _cli(argv) == 0 and (tmp_path / "c/manifest.json").read_text() == before
    assert "done:" in capsys.readouterr().out


def test_rebuilding_into_a_cache_names_the_setting_that_changed(tiny_dirs, tiny_data, tmp_path):
    """Not the fingerprint's first differing key (shard_examples, features_sha256) but what the user changed."""
    out = tmp_path / "c"
    argv = ["teacher", "cache", "-o", str(out), "--top-k", "4", "--quiet", *_overrides(tiny_dirs, tiny_data)]
    assert _cli(argv) == 0
    for extra, named in ((["--top-k", "8"], r"another --top-k \(4 -> 8\); pass another -o DIR"),
                         (["data.max_length=96"], r"another data.max_length \(128 -> 96\); pass"),
                         (["--temperature", "2"], r"another --temperature \(\[1.0\] -> \[1.0, 2.0\]\); pass")):
        with pytest.raises(OkdError, match=rf"already holds a teacher cache built with {named}"):
            _cli(argv + extra)


# ----------------------------------------------------------------------------- which methods may use it

@pytest.mark.parametrize("extra,why", [
    ({"method.name": "okd"}, "online module"), ({"method.name": "seqkd"}, "generates"),
    ({"method.name": "imitkd"}, "samples"), ({"method.name": "minillm"}, "samples"),
    ({"method.name": "gkd", "method.lmbda": 0.5}, "lmbda"), ({"method.name": "fkd", "method.teacher": "online"}, "online"),
    ({"method.name": "sft"}, "without a teacher"),
    ({"method.name": "distillm", "method.replay_init_prob": 0.5}, "student samples")])
def test_methods_that_need_the_live_teacher_refuse_the_cache(extra, why, tmp_path):
    cfg = build_config({}, [f"{k}={v}" for k, v in {"teacher.cache": str(tmp_path), **extra}.items()])
    with pytest.raises(OkdError) as e:
        check_cache_method(cfg)
    _one_line(e, "teacher.cache", extra["method.name"], why)


@pytest.mark.parametrize("extra", [{"method.name": n} for n in ("fkd", "rkd", "jsd", "tvd", "distillm")]
                         + [{"method.name": "gkd", "method.lmbda": 0.0}, {"method.name": "fkd"}])
def test_frozen_teacher_methods_accept_the_cache(extra, tmp_path):
    check_cache_method(build_config({}, [f"{k}={v}" for k, v in {"teacher.cache": str(tmp_path), **extra}.items()]))
    check_cache_method(build_config({}, ["method.name=okd"]))  # no cache: nothing to check


# ----------------------------------------------------------------------------- through the trainer

def test_okd_train_from_a_full_cache_equals_live_fkd(full_cache, tiny_dirs, tiny_data, tmp_path):
    """`okd train teacher.cache=DIR` (teacher not loaded: teacher.path unset) logs the live run's losses."""
    common = _overrides(tiny_dirs, tiny_data) + ["train.max_steps=3", "train.batch_size=4", "train.lr=1e-3",
                                                 "data.group_by_length=false"]
    live = train(build_config({}, common + [f"output_dir={tmp_path / 'live'}"]), progress=False)
    cached_cfg = [o for o in common if not o.startswith("teacher.path=")]
    cached = train(build_config({}, cached_cfg + [f"teacher.cache={full_cache}", f"output_dir={tmp_path / 'c'}"]),
                   progress=False)

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(live)) == 3
    assert losses(cached) == pytest.approx(losses(live), rel=1e-5, abs=1e-6)
