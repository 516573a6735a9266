"""Training across tokenizers (okd.crosstok.data, okd.methods.crosstok, method.cross_tokenizer): the
cross-tokenizer path equals fkd with identical tokenizers, trains across two different tokenizers, and
the same-vocabulary refusal names the option."""

from __future__ import annotations

import json

import pytest
import torch

from okd.config import build_config
from okd.crosstok.data import CrossCollator, encode_pairs
from okd.data import Collator, load_examples
from okd.errors import OkdError
from okd.methods import Models, build_method
from okd.methods.base import scored_index
from okd.methods.crosstok import CrossTokenizerKD, OnlineCrossTokenizerKD
from okd.methods.kd import FrozenTeacherKD
from okd.methods.onpolicy import GKD
from okd.models.loading import load_model, load_tokenizer
from okd.train import train


def _sentencepiece_like(corpus: list[str]):
    """A small trained BPE under the SentencePiece convention (Metaspace `▁`, prepended to the text):
    other ids, other splits and another space convention than the tiny models' byte tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted({ch for text in corpus for ch in text} | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", "<pad>"], initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory, tiny_data):
    """A 3-layer tiny llama teacher with its own (SentencePiece-like) tokenizer."""
    import transformers as tf

    from okd.data.templates import format_prompt

    examples = load_examples(str(tiny_data))
    tok = _sentencepiece_like([format_prompt(e, "alpaca") + e.response for e in examples])
    ids = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                            tie_word_embeddings=True, **ids)
    directory = tmp_path_factory.mktemp("other_teacher")
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", [["method.name=fkd"], ["method.name=gkd", "method.lmbda=0", "method.beta=0.3"]])
def test_identical_tokenizers_equal_the_same_tokenizer_method(base_overrides, method):
    """hybrid through the cross-tokenizer path (own encoding, alignment, collator, groups) = the method's own
    loss on the same batch (fkd's FrozenTeacherKD; gkd at λ = 0, its ground-truth batches: jsd(β)): loss and
    every student gradient, at τ = 2 with a CE weight."""
    base_overrides = base_overrides + ["data.max_length=320"]  # whole prompts: rows of different lengths, padded
    common = method + ["method.temperature=2.0", "method.ce_weight=0.3", "train.loss_chunk_size=7"]
    cfg = build_config({}, base_overrides + common + ["method.cross_tokenizer=hybrid"])
    tok = load_tokenizer(cfg.student)
    student, teacher = load_model(cfg.student), load_model(cfg.teacher).requires_grad_(False)
    models = Models(student=student, teacher=teacher, tokenizer=tok, vocab_size=len(tok))
    cross = build_method(cfg, models)
    assert isinstance(cross, CrossTokenizerKD)
    cross.attach_teacher_tokenizer(load_tokenizer(cfg.teacher))
    plain = build_method(build_config({}, base_overrides + common), models)
    assert isinstance(plain, FrozenTeacherKD if method == ["method.name=fkd"] else GKD)
    feats, stats = encode_pairs(load_examples(cfg.data.train)[:6], tok, tok, "alpaca", "alpaca", cfg.data.max_length)
    assert stats["teacher_unaligned"] == stats["student_unaligned"] == 0
    assert stats["one_to_one_groups"] == stats["response_tokens"]
    batch = CrossCollator(Collator(tok.pad_token_id), tok.pad_token_id)(feats)
    assert stats["truncated_prompt"] == 0 and (batch["attention_mask"] == 0).any()
    batch["scored_index"] = scored_index(batch["labels"])
    norm = float(len(batch["scored_index"]))
    results = []
    for way in (plain, cross):
        student.zero_grad()
        loss = way.losses(batch, norm)["student"]
        loss.backward()
        results.append((loss.detach(), _grads(student)))
    (l_plain, g_plain), (l_cross, g_cross) = results
    assert float(l_plain) > 0
    torch.testing.assert_close(l_cross, l_plain, atol=1e-5, rtol=1e-5)
    assert len(g_cross) == len(g_plain) > 0
    for a, b in zip(g_cross, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_identical_tokenizers_online_equals_okd(base_overrides):
    """okd across tokenizers (hybrid) with identical tokenizers = okd's OnlineTeacherKD on the same batch:
    both losses, every student gradient and every online-module gradient (the module's KL(q‖p′) comes from
    the swapped groups), at τ = 2, α 0.3, the module on every layer."""
    from okd.models.online import add_online_module
    from okd.methods.okd import OnlineTeacherKD

    base_overrides = base_overrides + ["data.max_length=320"]
    common = ["method.name=okd", "method.temperature=2.0", "online.alpha=0.3", "online.layers=null",
              "train.loss_chunk_size=7"]
    cfg = build_config({}, base_overrides + common + ["method.cross_tokenizer=hybrid"])
    tok = load_tokenizer(cfg.student)
    student = load_model(cfg.student)
    teacher = add_online_module(load_model(cfg.teacher), cfg.online)
    with torch.no_grad():  # a module that is not the identity yet (peft starts LoRA's B at zero)
        for name, p in teacher.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    models = Models(student=student, teacher=teacher, tokenizer=tok, vocab_size=len(tok))
    cross = build_method(cfg, models)
    assert isinstance(cross, OnlineCrossTokenizerKD)
    cross.attach_teacher_tokenizer(load_tokenizer(cfg.teacher))
    plain = OnlineTeacherKD(cfg=build_config({}, base_overrides + common), models=models)
    feats, _ = encode_pairs(load_examples(cfg.data.train)[:6], tok, tok, "alpaca", "alpaca", cfg.data.max_length)
    batch = CrossCollator(Collator(tok.pad_token_id), tok.pad_token_id)(feats)
    batch["scored_index"] = scored_index(batch["labels"])
    norm = float(len(batch["scored_index"]))
    results = []
    for method in (plain, cross):
        student.zero_grad(), teacher.zero_grad()
        losses = method.losses(batch, norm)
        (losses["student"] + losses["online"]).backward()
        results.append(({k: v.detach() for k, v in losses.items()}, _grads(student), _grads(teacher)))
    (l_plain, s_plain, t_plain), (l_cross, s_cross, t_cross) = results
    assert float(l_plain["online"]) > 0 and float(l_plain["student"]) > 0
    for k in ("student", "online"):
        torch.testing.assert_close(l_cross[k], l_plain[k], atol=1e-5, rtol=1e-5)
    assert len(s_cross) == len(s_plain) > 0 and len(t_cross) == len(t_plain) > 0
    for a, b in zip(s_cross + t_cross, s_plain + t_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_online_teacher_trains_across_tokenizers(base_overrides, other_teacher, tmp_path):
    """okd with a teacher of another tokenizer: both losses finite, the student's going down over 10
    steps, the module's loss logged, online_module/ saved, unaligned counts in summary.json."""
    out = tmp_path / "okd_x"
    overrides = [o for o in base_overrides if not o.startswith(("output_dir=", "train.max_steps="))]
    train(build_config({}, overrides + [f"teacher.path={other_teacher}", "method.name=okd",
                                        "method.cross_tokenizer=hybrid", "train.max_steps=10", "train.lr=3e-3",
                                        "train.eval_every=0", "data.valid_limit=4", f"output_dir={out}"]),
          progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(torch.tensor(r["loss_online"])) for r in rows)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert (out / "online_module" / "adapter_model.safetensors").exists()
    assert isinstance(json.loads((out / "summary.json").read_text())["data"]["teacher_unaligned"], int)


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss, method", [("hybrid", "fkd"), ("uld", "fkd"), ("span", "fkd"), ("hybrid", "gkd")])
def test_trains_across_tokenizers(base_overrides, other_teacher, tmp_path, loss, method):
    """fkd (gkd at λ = 0) with a teacher whose tokenizer differs: finite losses that go down over 10 steps, the
    alignment's unaligned-token counts in summary.json, the student saved."""
    out = tmp_path / f"run_{loss}_{method}"
    overrides = [o for o in base_overrides if not o.startswith(("output_dir=", "train.max_steps="))]
    overrides += ["method.lmbda=0"] if method == "gkd" else []
    train(build_config({}, overrides + [f"teacher.path={other_teacher}", f"method.name={method}",
                                        f"method.cross_tokenizer={loss}", "train.max_steps=10", "train.lr=3e-3",
                                        "train.eval_every=0", "data.valid_limit=4", f"output_dir={out}"]),
          progress=False)
    losses = _losses(out)
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    data = json.loads((out / "summary.json").read_text())["data"]
    for key in ("teacher_unaligned", "student_unaligned", "aligned_groups", "one_to_one_groups"):
        assert isinstance(data[key], int), key
    # different tokenizations of the same answers: groups exist, fewer than the byte tokenizer's tokens
    assert 0 < data["aligned_groups"] < data["response_tokens"]
    assert data["student_unaligned"] < data["response_tokens"] / 4
    assert (out / "student" / "config.json").exists()


def test_unaligned_tokens_are_counted(other_teacher):
    """A response cut short on one side only: the tokens past the last common boundary are counted on
    each side (here the student's byte tokens " red" and the teacher's "▁red." and its EOS)."""
    from okd.data.readers import Example
    from okd.models.tiny import byte_tokenizer

    t_tok = load_tokenizer(build_config({}, [f"teacher.path={other_teacher}"]).teacher)
    ex = Example(instruction="Say red and blue.", response="red blue red.")
    assert t_tok.convert_ids_to_tokens(t_tok(ex.response, add_special_tokens=False)["input_ids"]) == \
        ["▁red", "▁blue", "▁red."]
    feats, stats = encode_pairs([ex], byte_tokenizer(), t_tok, "plain", "plain", 20)
    assert stats["truncated_response"] == 1  # the student's 14 tokens cut to 12: "red blue red"
    assert (stats["teacher_unaligned"], stats["student_unaligned"], stats["aligned_groups"]) == (2, 4, 2)
    al = feats[0]["alignment"]
    assert al.teacher.tolist() == [[0, 0], [1, 1]] and al.student.tolist() == [[0, 2], [3, 7]]


def test_vocabulary_mismatch_names_the_option(base_overrides, other_teacher, tmp_path):
    """method.cross_tokenizer=off with another tokenizer: one OkdError line naming the option, before any
    model loads (preflight reads tokenizers only)."""
    from okd.train.preflight import preflight

    cfg = build_config({}, base_overrides + [f"teacher.path={other_teacher}", "method.name=fkd"])
    with pytest.raises(OkdError) as err:
        preflight(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "tokenizers differ" in message and "method.cross_tokenizer=hybrid" in message


def test_cross_tokenizer_refused_outside_ground_truth_kd(base_overrides):
    """fkd/rkd/jsd with a frozen teacher and okd online only: seqkd, tvd, okd with a frozen teacher and fkd
    with an online one are refused with one line; so is okd's per-token online.kl_weight."""
    for extra in (["method.name=seqkd"], ["method.name=tvd"], ["method.name=okd", "method.teacher=frozen"],
                  ["method.name=fkd", "method.teacher=online"], ["method.name=gkd", "method.lmbda=0.5"]):
        with pytest.raises(OkdError) as err:
            build_config({}, base_overrides + extra + ["method.cross_tokenizer=hybrid"])
        assert "method.cross_tokenizer" in str(err.value) and "\n" not in str(err.value)
    build_config({}, base_overrides + ["method.name=rkd", "method.cross_tokenizer=span"])
    with pytest.raises(OkdError, match="gkd at method.lmbda=0; not method.name=gkd with teacher frozen, lmbda 0.5"):
        build_config({}, base_overrides + ["method.name=gkd", "method.lmbda=0.5", "method.cross_tokenizer=uld"])
    build_config({}, base_overrides + ["method.name=gkd", "method.lmbda=0", "method.cross_tokenizer=uld"])
    # the default spelled out: YAML reads a bare `off` as false
    assert build_config({}, base_overrides + ["method.cross_tokenizer=off"]).method.cross_tokenizer == "off"
    cfg = build_config({}, base_overrides + ["method.name=okd", "method.cross_tokenizer=uld",
                                             "online.kl_weight=teacher_miss"])
    with pytest.raises(OkdError, match="online.kl_weight=teacher_miss .* use online.kl_weight=uniform"):
        OnlineCrossTokenizerKD(cfg=cfg, models=None)
