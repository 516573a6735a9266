"""The demo's report: the table (okd compare's rows), the learning curves, and readable sample answers.

The table's ROUGE-L keeps the paper's protocol (sampled answers, temperature 1, top-p 1). Small models
sampled at temperature 1 ramble, so the answers *shown* are greedy (the most likely continuation), on a few
short held-out prompts, for every model: that is where a trained student visibly differs from the
untrained one. They are generated once per model and cached in `<out>/samples/<label>.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from okd.precision import cpu_features

LABELS = {"student_init": "student (untrained)"}  # the demo's name for compare's reference row
SAMPLE_PROMPTS = 3
# Small models decoded greedily loop ("I'm ready. I'm ready. ..."); for reading, no 3-gram may repeat
SAMPLE_NO_REPEAT_NGRAM = 3
SAMPLE_DECODING = f"greedy, no repeated {SAMPLE_NO_REPEAT_NGRAM}-gram (transformers' no_repeat_ngram_size)"


def sample_examples(data: str, split: str, limit: int, n: int = SAMPLE_PROMPTS) -> list:
    """n held-out examples with a short, self-contained instruction (the same for every model)."""
    from okd.data import load_examples

    examples = load_examples(data, split=split, limit=limit)
    short = [ex for ex in examples if 15 <= len(ex.instruction) <= 160 and not ex.input]
    return (short + [ex for ex in examples if ex not in short])[:n]


def write_samples(path: Path, model: str, examples: list, *, template: str, max_new_tokens: int,
                  max_prompt_length: int, dtype: str) -> dict:
    """Greedy answers of `model` to `examples`, cached in `path` (redone when model or prompts change)."""
    key = {"model": str(model), "prompts": [ex.instruction for ex in examples], "template": template,
           "max_new_tokens": max_new_tokens, "decoding": SAMPLE_DECODING}
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and _newer(path, model):
            return cached
    except (OSError, ValueError):
        pass
    from okd.eval.follow import context_length, fit_prompts
    from okd.eval.runner import load_model_and_tokenizer, prepare_prompts
    from okd.generation import generate

    t0 = time.perf_counter()
    m, tok = load_model_and_tokenizer(model, dtype)
    prompts = fit_prompts(prepare_prompts(examples, tok, template, max_prompt_length), context_length(m),
                          max_new_tokens, bos=getattr(tok, "bos_token_id", None), log=lambda msg: None)
    gen = generate(m, tok, prompts, max_new_tokens=max_new_tokens, greedy=True, batch_size=len(prompts),
                   no_repeat_ngram_size=SAMPLE_NO_REPEAT_NGRAM)
    out = {"key": key, "seconds": time.perf_counter() - t0,
           "items": [{"instruction": ex.instruction, "answer": text, "finished": fin}
                     for ex, text, fin in zip(examples, gen.texts, gen.finished)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return out


def _newer(path: Path, model: str) -> bool:
    """The cache file was written after the model's weights (a retrained run invalidates it)."""
    weights = [p for p in Path(model).glob("*.safetensors")] if Path(model).is_dir() else []
    return all(path.stat().st_mtime >= w.stat().st_mtime for w in weights)


def _cell(v, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def table_row(r: dict) -> list[str]:
    """model, ROUGE-L, train s, train tokens/s, valid CE, gen tokens/s ("-": not trained)."""
    rouge = next(iter((r.get("rougeL") or {}).values()), None)
    trained = ["-", "-", "-"] if r["kind"] == "reference" else \
        [_cell(r.get("train_s"), "{:.0f}"), _cell(r.get("tokens_per_s"), "{:.0f}"), _cell(r.get("valid_loss"), "{:.3f}")]
    return [LABELS.get(r["name"], r["name"]), _cell(rouge and rouge["mean"], "{:.2f}"), *trained,
            _cell(r.get("gen_tokens_per_s"), "{:.0f}")]


def sample_lines(samples: dict) -> list[str]:
    lines = []
    for item in samples.get("items", []):
        q = " ".join(item["instruction"].split())[:160]
        a = " ".join(item["answer"].split())[:300] or "(empty)"
        lines.append(f"- **{q}** → {a}{'' if item.get('finished') else ' …'}")
    return lines


def machine_line(hw: dict, precision: str) -> str:
    threads = hw.get("torch_threads")
    features = cpu_features()
    return (f"Machine: {hw['processor']}{' ' + features if features else ''}, {hw['cpu_count']} CPUs "
            f"({threads} torch threads), {'GPU ' + hw['gpu'] if hw.get('gpu') else 'no GPU'}, torch {hw['torch']}, "
            f"{precision}.")
