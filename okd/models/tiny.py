"""Tiny random models and a byte-level tokenizer, built on the fly.

Used by the tests and by `okd demo --tiny`: they need real HF model directories (config, safetensors,
tokenizer) without any download. The tokenizer is byte-level BPE with no merges, so every UTF-8
string round-trips and no training is needed; it has a chat template so the `chat` prompt template
works too.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|endoftext|>\n"
    "{% else %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer():
    """A 260-token byte-level tokenizer (256 bytes + 4 specials) as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", *, vocab_size: int = 260, hidden: int = 64, layers: int = 2,
                heads: int = 4, max_positions: int = 512):
    """A transformers config for a tiny model of the given architecture (llama, gpt2, qwen2, opt)."""
    import transformers as tf

    tok_ids = dict(bos_token_id=256, eos_token_id=256, pad_token_id=257)
    if arch == "llama":
        return tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=heads, max_position_embeddings=max_positions,
                              tie_word_embeddings=True, **tok_ids)
    if arch == "qwen2":
        return tf.Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=heads, max_position_embeddings=max_positions,
                              tie_word_embeddings=False, **tok_ids)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                             n_positions=max_positions, **tok_ids)
    if arch == "opt":
        return tf.OPTConfig(vocab_size=vocab_size, hidden_size=hidden, ffn_dim=hidden * 2,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=max_positions, word_embed_proj_dim=hidden,
                            **tok_ids)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_model(arch: str = "llama", *, seed: int = 0, **kwargs):
    """A randomly initialised tiny causal LM (deterministic for a given seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kwargs))
    return model.eval()


def save_tiny(directory: str | Path, arch: str = "llama", *, seed: int = 0, **kwargs) -> Path:
    """Write a tiny model and the byte tokenizer as an HF directory; returns the directory."""
    directory = Path(directory)
    tiny_model(arch, seed=seed, **kwargs).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory
