"""A teacher cache for cross-tokenizer runs (okd.crosstok.cached, okd.train.cache): built on the teacher's own
tokens, it gives the live teacher's losses (exactly at k = V, ULD at the cache's k) and trains without the
teacher model; a cache of the wrong kind or for another student stops with one line."""

from __future__ import annotations

import json

import pytest
import torch

from okd.config import build_config
from okd.crosstok import uld_loss
from okd.crosstok.cached import CachedTeacher
from okd.crosstok.data import CrossCollator, groups_of, pair_vocab
from okd.data import Collator
from okd.errors import OkdError
from okd.methods import Models, build_method
from okd.methods.base import Scored, head, scored_hidden, scored_index
from okd.methods.crosstok import CachedCrossTokenizerKD, CrossTokenizerKD, RowLogits
from okd.models.loading import load_model, load_tokenizer
from okd.models.teacher_cache import open_cache
from okd.train import train
from okd.train.cache import build_teacher_cache
from okd.train.setup import load_split
from tests.test_crosstok_train import other_teacher  # noqa: F401  (the fixture: a teacher of another tokenizer)


def _cfg(base_overrides, teacher, *extra):
    return build_config({}, base_overrides + [f"teacher.path={teacher}", "method.name=fkd", "data.max_length=160",
                                              "method.temperature=2.0", "train.loss_chunk_size=5", *extra])


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_dirs, tiny_data, other_teacher):  # noqa: F811
    """Two caches of the other teacher on the tiny data for the tiny student: every token, and the top 16."""
    root = tmp_path_factory.mktemp("xcache")
    overrides = [f"student.path={tiny_dirs['student']}", f"data.train={tiny_data}", "data.max_length=160",
                 f"teacher.path={other_teacher}", "method.name=fkd", "method.cross_tokenizer=hybrid",
                 "method.temperature=2.0"]
    cfg = build_config({}, overrides)
    out = {}
    for name, k in (("all", "all"), ("top16", 16)):
        manifest = build_teacher_cache(cfg, root / name, top_k=k, progress=False)
        assert manifest["depends_on"]["cross_tokenizer"]["student_template"] == cfg.data.template
        assert manifest["shared_vocab"]["size"] == len(pair_vocab(load_tokenizer(cfg.teacher),
                                                                  load_tokenizer(cfg.student)).teacher)
        out[name] = root / name
    return out


def _batch(cfg, n=6):
    s_tok, t_tok = load_tokenizer(cfg.student), load_tokenizer(cfg.teacher)
    feats = load_split(cfg, cfg.data.train, "train", s_tok, None, False, teacher_tokenizer=t_tok)[1][:n]
    for i, f in enumerate(feats):
        f["example_index"] = i
    batch = CrossCollator(Collator(s_tok.pad_token_id), t_tok.pad_token_id)(feats)
    batch["scored_index"] = scored_index(batch["labels"])
    return batch, s_tok, t_tok


@pytest.mark.parametrize("loss", ["hybrid", "uld", "span"])
def test_cache_of_every_token_equals_the_live_teacher(base_overrides, other_teacher, caches, loss):  # noqa: F811
    """At top_k = V the cached teacher's loss and every student gradient equal the live teacher's (τ = 2,
    a CE weight): each group's value comes from the same distributions, read from disk."""
    cfg = _cfg(base_overrides, other_teacher, f"method.cross_tokenizer={loss}", "method.ce_weight=0.3")
    batch, s_tok, t_tok = _batch(cfg)
    student = load_model(cfg.student)
    live = build_method(cfg, Models(student=student, teacher=load_model(cfg.teacher).requires_grad_(False),
                                    tokenizer=s_tok, vocab_size=len(s_tok)))
    cached_cfg = _cfg(base_overrides, other_teacher, f"method.cross_tokenizer={loss}", "method.ce_weight=0.3",
                      f"teacher.cache={caches['all']}")
    cached = build_method(cached_cfg, Models(student=student, teacher=None, tokenizer=s_tok, vocab_size=len(s_tok),
                                             teacher_cache=open_cache(caches["all"])))
    assert type(live) is CrossTokenizerKD and type(cached) is CachedCrossTokenizerKD
    norm = float(len(batch["scored_index"]))
    results = []
    for method in (live, cached):
        method.attach_teacher_tokenizer(t_tok)
        student.zero_grad()
        value = method.losses(batch, norm)["student"]
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in student.parameters() if p.grad is not None]))
    (l_live, g_live), (l_cached, g_cached) = results
    assert float(l_live) > 0
    torch.testing.assert_close(l_cached, l_live, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_cached, g_live):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_top_k_cache_gives_uld_at_k_and_a_lower_bound_of_the_shared_divergence(base_overrides, other_teacher,  # noqa: F811
                                                                             caches):
    """With the top 16 cached: ULD equals the live teacher's ULD_16 group by group, and the hybrid's exact
    part (fkl over the shared vocabulary) is at most the live value, group by group (coarsening)."""
    from okd.crosstok import hybrid_loss

    cfg = _cfg(base_overrides, other_teacher, "method.cross_tokenizer=hybrid")
    batch, s_tok, t_tok = _batch(cfg)
    student, teacher = load_model(cfg.student), load_model(cfg.teacher)
    groups = groups_of(batch)
    s_scored = Scored.of(batch)
    t_scored = Scored.from_labels(batch["teacher_labels"], batch.get("teacher_scored_index"))
    with torch.no_grad():
        zs = RowLogits(scored_hidden(student, batch, s_scored), head(student, len(s_tok)))
        zt = RowLogits(scored_hidden(teacher, batch, t_scored, side="teacher_"), head(teacher, len(t_tok)))
        cache = open_cache(caches["top16"])
        side = CachedTeacher(cache.rows("train", batch["example_index"], CachedTeacher.NAMES),
                             vocab_size=cache.vocab_size, shared_size=cache.manifest["shared_vocab"]["size"],
                             temperatures=cache.tail_temperatures)
        rows = (groups.s_first, groups.t_first)
        live_uld = uld_loss(zs, zt, *rows, k=16, temperature=2.0).values
        cached_uld = uld_loss(zs, side, *rows, temperature=2.0).values  # k = min(256, the cache's 16)
        torch.testing.assert_close(cached_uld, live_uld, atol=2e-3, rtol=0)  # fp16 log-probabilities on disk
        shared = pair_vocab(t_tok, s_tok)
        args = (groups, shared, s_scored.targets, t_scored.targets)
        live = hybrid_loss(zs, zt, *args, kind="fkl", temperature=2.0)
        cached = hybrid_loss(zs, side, *args, kind="fkl", temperature=2.0)
    exact = live.exact
    assert exact.any() and torch.equal(exact, cached.exact)
    assert (cached.values[exact] <= live.values[exact] + 1e-3).all()
    assert (cached.values[exact] < live.values[exact] - 1e-4).any()  # it is a bound, not the value, at k < |M|


def test_trains_from_the_cache_without_the_teacher(base_overrides, other_teacher, caches, tmp_path,  # noqa: F811
                                                   monkeypatch):
    """fkd hybrid across tokenizers from the cache: the teacher model is never loaded, the loss goes down."""
    from okd.models import loading

    original = loading.load_model

    def no_teacher(mc, *a, **kw):  # okd.train.setup imports load_model from okd.models.loading when it runs
        assert str(mc.path) != str(other_teacher), "the teacher was loaded"
        return original(mc, *a, **kw)

    monkeypatch.setattr(loading, "load_model", no_teacher)
    out = tmp_path / "cached"
    overrides = [o for o in base_overrides if not o.startswith(("output_dir=", "train.max_steps="))]
    train(build_config({}, overrides + [f"teacher.path={other_teacher}", "method.name=fkd", "data.max_length=160",
                                        "method.cross_tokenizer=hybrid", "method.temperature=2.0",
                                        f"teacher.cache={caches['top16']}", "train.max_steps=10", "train.lr=3e-3",
                                        "train.eval_every=0", "data.valid_limit=4", f"output_dir={out}"]),
          progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_a_cache_of_the_wrong_kind_is_one_line(base_overrides, other_teacher, caches, tiny_dirs, tmp_path):  # noqa: F811
    """A cross-tokenizer cache for a run on one vocabulary, a run's own cache for a cross-tokenizer run, a cache
    for another student's tokenizer, and okd online with a cache: each stops with one line."""
    from okd.models.tiny import byte_tokenizer, save_tiny

    def fails(overrides, match):
        with pytest.raises(OkdError, match=match) as info:
            train(build_config({}, [o for o in base_overrides if not o.startswith("output_dir=")]
                               + ["data.max_length=160", "method.temperature=2.0", "train.max_steps=1",
                                  f"output_dir={tmp_path / str(len(list(tmp_path.iterdir())))}", *overrides]),
                  progress=False)
        assert "\n" not in str(info.value)

    fails(["method.name=fkd", f"teacher.cache={caches['all']}"], "on its own tokens, for a method.cross_tokenizer run")
    plain = tmp_path / "plain_cache"
    build_teacher_cache(build_config({}, base_overrides + ["data.max_length=160", "method.temperature=2.0"]), plain,
                        top_k=8, progress=False)
    fails([f"teacher.path={other_teacher}", "method.name=fkd", "method.cross_tokenizer=hybrid",
           f"teacher.cache={plain}"], "built for a run without method.cross_tokenizer")
    other_student = save_tiny(tmp_path / "other_student", "llama", layers=2, hidden=32, seed=5, vocab_size=264)
    tok = byte_tokenizer()
    tok.add_tokens(["<x1>", "<x2>"])  # another student tokenizer: the byte tokenizer and two more tokens
    tok.save_pretrained(other_student)
    fails([f"teacher.path={other_teacher}", f"student.path={other_student}", "method.name=fkd",
           "method.cross_tokenizer=hybrid", f"teacher.cache={caches['all']}"], "the student's tokenizer")
    fails([f"teacher.path={other_teacher}", "method.name=okd", "method.cross_tokenizer=hybrid",
           f"teacher.cache={caches['all']}"], "teacher.cache does not combine with method.name=okd")
