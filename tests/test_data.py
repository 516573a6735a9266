"""Layer 1 `data`: readers, templates, tokenization with response-only labels, batching."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from okd.data import (TEMPLATES, Collator, Example, collate_prompts, encode_example, encode_examples,
                      format_prompt, length_grouped_order, load_examples, load_examples_with_stats,
                      prompt_ids)
from okd.errors import OkdError
from okd.models.tiny import byte_tokenizer

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
DOLLY = {"instruction": "Who wrote it?", "context": "Hamlet is a play.", "response": "Shakespeare",
         "category": "closed_qa"}
PROMPT_COMPLETION = {"prompt": "The sky is", "completion": " blue."}
CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]}
SHAREGPT = {"id": "x", "conversations": [
    {"from": "human", "value": "What is 1+1?"},
    {"from": "gpt", "value": "2"},
]}


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# readers


def test_formats_from_jsonl(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [ALPACA, DOLLY, PROMPT_COMPLETION, CHAT, SHAREGPT])
    a, d, p, c, s = load_examples(f)
    assert (a.instruction, a.input, a.response, a.messages) == ("Add the numbers.", "2 and 3", "5", ())
    assert (d.instruction, d.input, d.response) == ("Who wrote it?", "Hamlet is a play.", "Shakespeare")
    assert (p.instruction, p.input, p.response) == ("The sky is", "", " blue.")
    assert c.instruction == "Capital of France?" and c.response == "Paris."
    assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "user"]
    assert s.instruction == "What is 1+1?" and s.response == "2"
    assert s.messages == ({"role": "user", "content": "What is 1+1?"},)
    assert a.source.endswith("d.jsonl:1") and s.source.endswith("d.jsonl:5")


def test_json_array_with_line_numbers(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([ALPACA, DOLLY, {"instruction": "x", "output": ""}], indent=2))
    with pytest.raises(OkdError) as e:
        load_examples(f)
    # the third element starts on the line of its opening brace
    line = f.read_text().splitlines().index("  {", 10) + 1
    assert f"d.json line {line}: empty response (field 'output')" in str(e.value)
    examples = load_examples(f, skip_invalid=True)
    assert [x.response for x in examples] == ["5", "Shakespeare"]
    assert examples[1].source.endswith("d.json:7")  # "[" on line 1, ALPACA on lines 2-6


def test_directory_and_splits(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "b.jsonl", [DOLLY])
    write_jsonl(plain / "a.jsonl", [ALPACA])
    (plain / "notes.txt").write_text("ignored")
    assert [x.response for x in load_examples(plain)] == ["5", "Shakespeare"]  # sorted by name

    split = tmp_path / "split"
    split.mkdir()
    write_jsonl(split / "train.jsonl", [ALPACA, ALPACA])
    write_jsonl(split / "validation.jsonl", [DOLLY])
    (split / "test.json").write_text(json.dumps([PROMPT_COMPLETION]))
    assert len(load_examples(split)) == 2
    assert load_examples(split, split="valid")[0].response == "Shakespeare"
    assert load_examples(split, split="test")[0].response == " blue."
    with pytest.raises(OkdError, match="no file for split 'other'"):
        load_examples(split, split="other")


def test_limit(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [ALPACA] * 5)
    assert len(load_examples(f, limit=3)) == 3


@pytest.mark.parametrize("line,expected", [
    ('{"instruction": "x", "output": "y"', "line 2: malformed JSON"),
    ('{"instruction": "x", "input": "y"}', "line 2: missing field 'output'"),
    ('{"prompt": "x"}', "line 2: missing field 'completion'"),
    ('{"instruction": "x", "output": "  "}', "line 2: empty response (field 'output')"),
    ('{"instruction": "x", "context": "", "response": ""}', "line 2: empty response (field 'response')"),
    ('{"text": "x"}', "line 2: record matches no known format (keys: text)"),
    ('[1, 2]', "line 2: expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "line 2: the last message"),
])
def test_errors_name_file_and_line(tmp_path, line, expected):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(ALPACA) + "\n" + line + "\n" + json.dumps(DOLLY) + "\n")
    with pytest.raises(OkdError) as e:
        load_examples(f)
    msg = str(e.value)
    assert "train.jsonl " + expected in msg and "data.skip_invalid: true" in msg
    assert "\n" not in msg


def test_skip_invalid_counts(tmp_path, caplog):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([json.dumps(ALPACA), "{bad json", json.dumps({"instruction": "x", "output": ""}),
                            "", json.dumps(DOLLY)]) + "\n")
    examples, stats = load_examples_with_stats(f, skip_invalid=True)
    assert len(examples) == 2 and stats["skipped"] == 2 and stats["read"] == 4
    assert "line 2: malformed JSON" in stats["first_problem"]
    with caplog.at_level(logging.WARNING, logger="okd.data"):
        assert len(load_examples(f, skip_invalid=True)) == 2
    assert "skipped 2 invalid record(s)" in caplog.text


def test_empty_and_all_invalid_files_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(OkdError, match="empty.jsonl: the file is empty"):
        load_examples(empty)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": ""}])
    with pytest.raises(OkdError, match="no valid records"):
        load_examples(bad, skip_invalid=True)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(OkdError, match="no records found"):
        load_examples(tmp_path / "empty.json")


def test_missing_source(tmp_path, monkeypatch):
    with pytest.raises(OkdError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(OkdError) as e:
        load_examples("someone/some-dataset")
    assert "does not exist locally" in str(e.value) and "Hub" in str(e.value)


def test_hub_rows_are_parsed(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: [ALPACA, DOLLY])
    examples = load_examples("org/name", split="train")
    assert [x.response for x in examples] == ["5", "Shakespeare"] and examples[1].source == "org/name:1"


# ---------------------------------------------------------------------------------------------------
# templates


def test_alpaca_template_exact():
    no_input = Example(instruction="Say hi.", response="hi")
    assert format_prompt(no_input, "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    with_input = Example(instruction="Add.", input="2 3", response="5")
    assert format_prompt(with_input, "alpaca") == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd."
        "\n\n### Input:\n2 3\n\n### Response:\n")


def test_alpaca_template_multi_turn(tmp_path):
    chat = load_examples(write_jsonl(tmp_path / "c.jsonl", [CHAT]))[0]
    prompt = format_prompt(chat, "alpaca")
    assert "### Instruction:\nCapital of France?\n\n### Input:\nsystem: Be brief.\nuser: Hi\nassistant: Hello!" \
        "\n\n### Response:\n" in prompt


def test_chat_and_plain_templates(tok):
    ex = Example(instruction="Add.", input="2 3", response="5")
    assert format_prompt(ex, "chat", tok) == "<|user|>Add.\n\n2 3\n<|assistant|>"
    assert format_prompt(ex, "plain") == "Add.\n\n2 3"
    chat = Example(instruction="Q2", response="A2", messages=(
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}))
    assert format_prompt(chat, "chat", tok) == "<|user|>Q1\n<|assistant|>A1<|endoftext|>\n<|user|>Q2\n<|assistant|>"


def test_template_errors(tok):
    ex = Example(instruction="x", response="y")
    with pytest.raises(OkdError, match="unknown data.template 'vicuna'; valid templates: alpaca, chat, plain"):
        format_prompt(ex, "vicuna")
    no_template = byte_tokenizer()
    no_template.chat_template = None
    with pytest.raises(OkdError, match="no chat template"):
        format_prompt(ex, "chat", no_template)
    with pytest.raises(OkdError, match="unknown data.template"):
        encode_examples([ex], tok, "nope", 64)
    assert TEMPLATES == ("alpaca", "chat", "plain")


# ---------------------------------------------------------------------------------------------------
# tokenization


@pytest.mark.parametrize("template", TEMPLATES)
def test_prompt_masked_exactly(tok, template):
    ex = Example(instruction="Add the numbers.", input="2 and 3", response="The sum is 5.")
    feat = encode_example(ex, tok, template, 512)
    prompt = format_prompt(ex, template, tok)
    n = feat["prompt_len"]
    assert feat["input_ids"][:n] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert feat["labels"][:n] == [-100] * n
    assert all(label != -100 for label in feat["labels"][n:])
    assert feat["labels"][n:] == feat["input_ids"][n:]  # not shifted
    assert feat["input_ids"][-1] == tok.eos_token_id
    assert tok.decode([i for i in feat["labels"] if i != -100]) == ex.response + tok.eos_token


def test_bos_added_once(tok):
    from tokenizers.processors import TemplateProcessing

    bos_tok = byte_tokenizer()  # a tokenizer that puts BOS before plain text, like Llama's
    bos_tok._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_tok.bos_token_id)])
    ex = Example(instruction="Hi", response="Yo")
    alpaca = encode_example(ex, bos_tok, "alpaca", 512)["input_ids"]
    assert alpaca[0] == bos_tok.bos_token_id and alpaca[1] != bos_tok.bos_token_id
    bos_tok.chat_template = "{{ bos_token }}" + bos_tok.chat_template  # template writes its own BOS
    chat = encode_example(ex, bos_tok, "chat", 512)["input_ids"]
    assert chat[0] == bos_tok.bos_token_id and chat[1] != bos_tok.bos_token_id
    # the byte tokenizer adds no BOS by default, so none is added
    assert encode_example(ex, tok, "plain", 512)["input_ids"][0] != tok.bos_token_id


def test_left_truncation_of_prompt(tok):
    long_prompt = Example(instruction="word " * 40, response="ok")
    short = Example(instruction="hi", response="ok")
    feats, stats = encode_examples([long_prompt, short], tok, "plain", 32)
    feat = feats[0]
    assert len(feat["input_ids"]) == 32 and feat["prompt_len"] == 32 - 3  # "ok" + EOS
    full = tok(long_prompt.instruction, add_special_tokens=False)["input_ids"]
    assert feat["input_ids"][:feat["prompt_len"]] == full[-feat["prompt_len"]:]  # the END is kept
    assert feat["labels"][-3:] == tok("ok")["input_ids"] + [tok.eos_token_id]
    assert stats["truncated_prompt"] == 1 and stats["truncated_response"] == 0 and stats["dropped"] == 0
    assert stats["n"] == 2 and stats["max_len"] == 32
    assert stats["tokens"] == sum(len(f["input_ids"]) for f in feats)
    assert stats["response_tokens"] == sum(sum(x != -100 for x in f["labels"]) for f in feats)


def test_response_truncation(tok):
    ex = Example(instruction="Tell a long story please", response="la " * 30)
    feat = encode_example(ex, tok, "plain", 40)
    _, stats = encode_examples([ex], tok, "plain", 40)
    assert len(feat["input_ids"]) == 40 and feat["prompt_len"] == 8
    assert feat["input_ids"][-1] != tok.eos_token_id  # unfinished: no EOS
    assert tok.decode(feat["input_ids"][8:]) == ex.response[:32]
    assert stats["truncated_response"] == 1 and stats["truncated_prompt"] == 1


def test_everything_dropped_is_an_error(tok):
    with pytest.raises(OkdError, match="none of the 1 examples"):
        encode_examples([Example(instruction="", response="x")], tok, "plain", 32)


def test_prompt_ids_for_generation(tok):
    ex = Example(instruction="abcdefghij", response="z")
    assert prompt_ids(ex, tok, "plain", 100) == tok("abcdefghij")["input_ids"]
    assert prompt_ids(ex, tok, "plain", 4) == tok("ghij")["input_ids"]


# ---------------------------------------------------------------------------------------------------
# batching


def test_collator_pads_right_and_masks_labels(tok):
    feats, _ = encode_examples([Example(instruction="a", response="b"), Example(instruction="abcd", response="efg")],
                               tok, "plain", 64)
    batch = Collator(tok.pad_token_id)(feats)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == feats[0]["input_ids"] + [tok.pad_token_id] * 5
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == [-100] + feats[0]["labels"][1:] + [-100] * 5
    assert batch["labels"][1].tolist() == feats[1]["labels"]
    assert batch["prompt_len"].tolist() == [1, 4]
    padded = Collator(tok.pad_token_id, pad_to_multiple_of=16)(feats)
    assert padded["input_ids"].shape == (2, 16) and padded["labels"].dtype == torch.long


def test_collate_prompts_pads_left():
    batch = collate_prompts([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_length_grouped_order():
    lengths = [(i * 37) % 101 for i in range(1003)]
    order = length_grouped_order(lengths, batch_size=4, seed=1)
    assert sorted(order) == list(range(len(lengths)))
    assert order == length_grouped_order(lengths, batch_size=4, seed=1)
    assert order != length_grouped_order(lengths, batch_size=4, seed=2)
    # batches hold similar lengths: much less padding than a random order
    def padding(o):
        return sum(max(lengths[i] for i in o[k:k + 4]) * len(o[k:k + 4]) - sum(lengths[i] for i in o[k:k + 4])
                   for k in range(0, len(o), 4))
    import random
    shuffled = list(range(len(lengths)))
    random.Random(0).shuffle(shuffled)
    assert padding(order) < padding(shuffled) / 5
    assert length_grouped_order([], 4, 0) == []


def test_named_preset_is_resolved(tmp_path, monkeypatch):
    import sys
    import types

    split_dir = tmp_path / "preset"
    split_dir.mkdir()
    write_jsonl(split_dir / "train.jsonl", [ALPACA])
    write_jsonl(split_dir / "valid.jsonl", [DOLLY])
    fake = types.ModuleType("okd.data.presets")  # stands in for the real presets module
    fake.resolve_data_preset = lambda name, split: split_dir if name == "mypreset" else None
    monkeypatch.setitem(sys.modules, "okd.data.presets", fake)
    assert load_examples("mypreset", split="valid")[0].response == "Shakespeare"
    with pytest.raises(OkdError, match="does not exist"):
        load_examples("other.jsonl")


# ---------------------------------------------------------------------------------------------------
# issue 18: what used to pass silently or end in a traceback


def test_skip_invalid_says_how_many_on_the_console(tmp_path, caplog):
    """The trainer reads through load_examples_with_stats: the count of dropped records is logged there."""
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([json.dumps(ALPACA), "{bad json", json.dumps(DOLLY)]) + "\n")
    with caplog.at_level(logging.WARNING, logger="okd.data"):
        _, stats = load_examples_with_stats(f, skip_invalid=True)
    assert stats["skipped"] == 1
    assert "data.skip_invalid: skipped 1 invalid record(s) of 3" in caplog.text
    assert caplog.text.count("skipped 1 invalid") == 1


def test_split_directory_warns_about_files_it_does_not_read(tmp_path, caplog):
    write_jsonl(tmp_path / "train.jsonl", [ALPACA])
    write_jsonl(tmp_path / "more_data.jsonl", [DOLLY, DOLLY])
    with caplog.at_level(logging.WARNING, logger="okd.data"):
        examples, stats = load_examples_with_stats(tmp_path)
    assert len(examples) == 1 and stats["ignored_files"] == [str(tmp_path / "more_data.jsonl")]
    warned = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(warned) == 1 and "more_data.jsonl not read" in warned[0] and "train.jsonl" in warned[0]


def test_missing_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("looked up on the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("data/dolly", "data/train.jsonl", "../x/y", "./dolly"):
        with pytest.raises(OkdError, match=r"does not exist \(no such file or directory"):
            load_examples(source)


def test_line_separators_inside_a_jsonl_string(tmp_path):
    """U+2028 and friends are legal inside a JSON string: a JSONL file is split on newlines only."""
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"instruction": "a\u2028b\x0cc", "output": "d\u2029e"}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    (ex,) = load_examples(f)
    assert ex.instruction == "a\u2028b\x0cc" and ex.response == "d\u2029e"


@pytest.mark.parametrize("line,expected", [
    ('{"instruction": "a\\ud800", "output": "b"}', "line 1: field 'instruction' holds text that is not valid Unicode"),
    ("[" * 5000 + "]" * 5000, "line 1: unreadable JSON (nested too deeply)"),
    ('{"instruction": "a", "output": ' + "7" * 5000 + "}", "line 1: unreadable JSON (Exceeds the limit"),
    ('{"a\\nb": 1}', r"line 1: record matches no known format (keys: a\nb)"),
])
def test_records_no_reader_can_take_are_record_errors(tmp_path, line, expected):
    f = tmp_path / "d.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(OkdError) as e:
        load_examples(f)
    assert expected in str(e.value) and "\n" not in str(e.value)
    g = tmp_path / "d.json"
    g.write_text("[" + line + "]")
    with pytest.raises(OkdError) as e:
        load_examples(g)
    assert "\n" not in str(e.value)


def test_prompts_cut_to_the_template_are_refused_or_warned(tok, caplog):
    """max_length so small that prompts keep only "### Response:": an error when that is most examples, a
    warning with the count when it is a few."""
    long = Example(instruction="Explain this at length " * 8, response="Sure.")
    with pytest.raises(OkdError, match=r"data\.max_length=20 leaves no room for the instruction in 1 of 1 "
                                       r"examples.*raise data\.max_length"):
        encode_examples([long], tok, "alpaca", 20)
    _, stats = encode_examples([long], tok, "plain", 20)  # plain: nothing after the instruction, its end is kept
    assert stats["prompt_lost"] == 0 and stats["truncated_prompt"] == 1
    long_answer = Example(instruction="Say it.", response="a fairly long answer, 30 chars")
    short = [Example(instruction="Hi.", response="Hello.")] * 3
    with caplog.at_level(logging.WARNING, logger="okd.data"):
        feats, stats = encode_examples([long_answer, *short], tok, "alpaca", 40)
    assert stats["prompt_lost"] == 1 and len(feats) == 4
    assert "data.max_length=40 leaves no room for the instruction in 1 of 4 examples" in caplog.text


def test_files_that_are_not_json_records(tmp_path):
    (tmp_path / "obj.json").write_text('{\n  "data": [{"instruction": "a", "output": "b"}]\n}\n')
    (tmp_path / "one.json").write_text('{\n  "instruction": "a",\n  "output": "b"\n}\n')  # one pretty-printed record
    (tmp_path / "x.csv").write_text("instruction,output\na,b\n")
    (tmp_path / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    (tmp_path / "notes.txt").write_text("hello world\n")
    with pytest.raises(OkdError, match=r"obj\.json: one JSON object whose records are under 'data'"):
        load_examples(tmp_path / "obj.json")
    assert load_examples(tmp_path / "one.json")[0].response == "b"
    with pytest.raises(OkdError, match=r"x\.csv: a CSV file; .* convert it to JSON Lines first"):
        load_examples(tmp_path / "x.csv")
    with pytest.raises(OkdError, match=r"x\.jsonl\.gz: a gzip-compressed file; .* decompress it first"):
        load_examples(tmp_path / "x.jsonl.gz")
    with pytest.raises(OkdError, match=r"notes\.txt: not JSON Lines or a JSON array \(line 1 is not JSON\)"):
        load_examples(tmp_path / "notes.txt", skip_invalid=True)
