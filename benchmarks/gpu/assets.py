"""Models, tokenizer and data for the GPU benchmark, made on the spot (the GPU box has no network and no
preset; nothing here is downloaded).

- `smollm2`: SmolLM2-135M-Instruct's shapes (its config.json, written out below, 30 layers) for the
  teacher and the same with 8 layers for the student, random weights; a generated word-level
  tokenizer of the same vocabulary size (49,152) with SmolLM2's special tokens and ChatML chat
  template. Step time, tokens/s and FLOPs depend on shapes and token counts only, so a random model
  on made-up words measures what the real one would. A directory with the real config.json and
  tokenizer (`--shape-dir`, e.g. the converted preset) is used instead when given.
- `tiny`: okd's tiny random llamas and byte tokenizer (the CPU smoke run).
- data: Alpaca-style JSONL whose examples fill 55-95% of a given max_length in tokens (measured
  with the tokenizer), a third prompt and two thirds response, deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SMOLLM2_135M = {  # SmolLM2-135M-Instruct's config.json (as the okd preset converts it)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02,
    "intermediate_size": 1536, "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "unk_token_id": 0, "use_cache": True, "vocab_size": 49152,
}
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE_WORDS = ["system", "user", "assistant", "You", "are", "a", "helpful", "AI", "named", "SmolLM", "trained",
                  "by", "Hugging", "Face"]


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with `vocab_size` entries: SmolLM2's specials (ids 0-2), the chat
    template's words, then made-up words w0, w1, ...; whitespace-split, so one word = one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + TEMPLATE_WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def shape_dir(work: Path, source: str | None = None) -> Path:
    """A directory with a SmolLM2-135M config.json and a tokenizer: `source` if given, else generated."""
    if source:
        return Path(source)
    out = work / "smollm2-shape"
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(SMOLLM2_135M, indent=1))
        word_tokenizer(SMOLLM2_135M["vocab_size"]).save_pretrained(out)
    return out


def models(kind: str, work: Path, source: str | None = None) -> dict:
    """{"teacher", "student", "template"}: model directories (random weights, tokenizer saved along)."""
    if kind == "tiny":
        from okd.models.tiny import save_tiny

        t, s = work / "tiny-teacher", work / "tiny-student"
        if not (t / "config.json").exists():
            save_tiny(t, "llama", layers=4, hidden=64, seed=1)
            save_tiny(s, "llama", layers=2, hidden=32, seed=2)
        return {"teacher": str(t), "student": str(s), "template": "chat"}
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_step import random_models

    teacher, student = random_models(str(shape_dir(work, source)), work)
    return {"teacher": teacher, "student": student, "template": "chat"}


def data(tokenizer, max_length: int, n: int, path: Path, seed: int = 0) -> str:
    """`n` examples whose chat-formatted prompt + response take 55-95% of `max_length` tokens."""
    from okd.data import Example, format_prompt

    rng = random.Random(seed)
    vocab = [w for w in tokenizer.get_vocab() if w.startswith("w")] or list("abcdefghij")
    probe = " ".join(rng.choice(vocab) for _ in range(50))
    per_word = max(1, len(tokenizer(probe, add_special_tokens=False).input_ids)) / 50
    overhead = len(tokenizer(format_prompt(Example(instruction="", response=""), "chat", tokenizer),
                             add_special_tokens=False).input_ids) + 2
    rows = []
    for _ in range(n):
        room = max(2, int(rng.uniform(0.55, 0.95) * max_length) - overhead)
        words = max(2, int(room / per_word))
        prompt = max(1, words // 3)
        text = [rng.choice(vocab) for _ in range(words)]
        rows.append({"instruction": " ".join(text[:prompt]), "input": "", "output": " ".join(text[prompt:])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
