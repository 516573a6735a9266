"""Fast sampling on GPU (issue 14), checked on CPU: the static-KV-cache path of okd.generation and of
MiniLLM's two-model sampler gives the tokens of the default path; bucketed left padding changes no
greedy output; the compiled decode step (a quick torch.compile backend here; CUDA graphs on GPU)
traces without breaks and agrees; MiniLLM's EOS check every k tokens returns exactly what a
per-token check returned, RNG stream included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import okd.generation as generation
from okd.generation import default_pad_multiple, generate, left_pad, static_cache_for
from okd.methods.minillm import mixed_sample
from okd.models.tiny import byte_tokenizer, tiny_model


@pytest.fixture
def quick_compile(monkeypatch):
    """torch.compile with the eager backend: dynamo traces the decode step as on GPU, in a second."""
    from transformers import CompileConfig

    monkeypatch.setattr(generation, "compile_config", lambda: CompileConfig(backend="eager", mode=None))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def spy_caches(model) -> list[str]:
    import functools

    seen = []
    forward = model.forward

    @functools.wraps(forward)  # generate reads the forward's signature (position_ids, logits_to_keep)
    def spy(*args, **kwargs):
        seen.append(type(kwargs.get("cache", kwargs.get("past_key_values"))).__name__)
        return forward(*args, **kwargs)

    model.forward = spy
    return seen


# ----------------------------------------------------------------------------- okd.generation

def test_cpu_defaults_are_todays_path():
    m = tiny_model("llama", seed=0)
    assert not static_cache_for(m) and static_cache_for(m, True) and not static_cache_for(m, False)
    assert default_pad_multiple(torch.device("cpu")) == 1 and default_pad_multiple(torch.device("cuda")) == 64
    assert default_pad_multiple(torch.device("cuda"), static=False) == 1
    enc = left_pad([[1, 2, 3], [4]], 0, multiple=4)
    assert enc["input_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]]
    assert left_pad([[1, 2, 3, 4, 5]], 0, multiple=4)["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    seen = spy_caches(m)
    generate(m, byte_tokenizer(), [[5, 6, 7]], max_new_tokens=3, greedy=True)
    assert set(seen) == {"DynamicCache"}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "opt"])
def test_static_cache_and_bucketed_padding_change_no_greedy_token(tok, prompts, arch):
    m = tiny_model(arch, seed=0)
    ref = generate(m, tok, prompts, max_new_tokens=12, greedy=True, batch_size=4)
    seen = spy_caches(m)
    for kwargs in (dict(static_cache=True), dict(pad_multiple=64), dict(static_cache=True, pad_multiple=16),
                   dict(static_cache=True, pad_multiple=64, batch_size=3)):
        got = generate(m, tok, prompts, max_new_tokens=12, greedy=True, **{"batch_size": 4, **kwargs})
        assert got.sequences == ref.sequences and got.finished == ref.finished, kwargs
        assert got.num_tokens == ref.num_tokens
    assert "StaticCache" in seen


def test_no_repeat_ngram_keeps_greedy_answers_free_of_repeats(tok, prompts):
    def repeats(seq, n):
        grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
        return len(grams) - len(set(grams))

    m = tiny_model("llama", seed=0)  # a random model loops when decoded greedily
    plain = generate(m, tok, prompts, max_new_tokens=24, greedy=True, batch_size=4)
    free = generate(m, tok, prompts, max_new_tokens=24, greedy=True, batch_size=4, no_repeat_ngram_size=2)
    assert sum(repeats(s, 2) for s in plain.sequences) > 0  # the test can fail: there were repeats to remove
    assert all(repeats(s, 2) == 0 for s in free.sequences)


def test_static_cache_seeded_samples_equal(tok, prompts):
    m = tiny_model("llama", seed=3)
    a = generate(m, tok, prompts, max_new_tokens=16, seed=5)
    b = generate(m, tok, prompts, max_new_tokens=16, seed=5, static_cache=True, pad_multiple=64)
    assert a.sequences == b.sequences


def test_compiled_decode_step_agrees(tok, prompts, quick_compile):
    m = tiny_model("llama", seed=0)
    ref = generate(m, tok, prompts, max_new_tokens=10, greedy=True)
    got = generate(m, tok, prompts, max_new_tokens=10, greedy=True, static_cache=True, compile=True, pad_multiple=16)
    assert got.sequences == ref.sequences
    assert quick_compile["stats"]["unique_graphs"] >= 1  # the decode step really went through torch.compile
    assert not quick_compile["graph_break"]


# ----------------------------------------------------------------------------- MiniLLM's sampler

@torch.no_grad()
def reference_mixed_sample(student, teacher, prompts, *, alpha, max_new_tokens, eos_ids, pad_id, vocab_size,
                           temperature=1.0):
    """okd.methods.minillm.mixed_sample as it was before issue 14 (EOS read every token), verbatim."""
    from okd.methods.minillm import _step

    device = torch.device("cpu")
    enc = left_pad(prompts, pad_id, device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    n = len(prompts)
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    log_a, log_1ma = (math.log(alpha) if alpha > 0 else None), (math.log1p(-alpha) if alpha < 1 else None)
    toks, lmix, lq, lp, alive = [], [], [], [], []
    s_cache = t_cache = None
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    try:
        for _ in range(max_new_tokens):
            zs, s_cache = _step(student, ids, mask, pos, s_cache)
            zt, t_cache = _step(teacher, ids, mask, pos, t_cache)
            log_q1 = F.log_softmax(zs[:, :vocab_size].float(), -1)
            log_p1 = F.log_softmax(zt[:, :vocab_size].float().to(device), -1)
            log_qT = log_q1 if temperature == 1.0 else F.log_softmax(zs[:, :vocab_size].float() / temperature, -1)
            log_pT = log_p1 if temperature == 1.0 else F.log_softmax(zt[:, :vocab_size].float() / temperature, -1)
            if log_a is None:
                log_m = log_qT
            elif log_1ma is None:
                log_m = log_pT
            else:
                log_m = torch.logaddexp(log_pT + log_a, log_qT + log_1ma)
            y = torch.multinomial(log_m.exp(), 1).squeeze(1)
            y = torch.where(done, torch.full_like(y, pad_id), y)
            pick = y[:, None]
            toks.append(y), alive.append(~done)
            lmix.append(log_m.gather(1, pick).squeeze(1))
            lq.append(log_q1.gather(1, pick).squeeze(1))
            lp.append(log_p1.gather(1, pick).squeeze(1))
            done = done | torch.isin(y, eos)
            if bool(done.all()):
                break
            ids, pos = pick, pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    cols = [torch.stack(x, 1).tolist() for x in (toks, lmix, lq, lp, alive)]
    out = [], [], [], []
    for i in range(n):
        k = sum(cols[4][i])
        for o, c in zip(out, cols):
            o.append(c[i][:k])
    return out


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=2, layers=2, hidden=32), tiny_model("llama", seed=1, layers=4, hidden=64)


SAMPLER_PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12] * 7]
# EOS = 256 (rarely drawn: rows run to max_new_tokens) or 60 ids (every row ends early, at different steps)
EOS_CASES = [[256], list(range(60))]


def _run(fn, pair, eos, max_new_tokens, seed=0, **kwargs):
    torch.manual_seed(seed)
    out = fn(*pair, SAMPLER_PROMPTS, alpha=0.2, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=257,
             vocab_size=260, **kwargs)
    return tuple(out), torch.get_rng_state()


@pytest.mark.parametrize("eos", EOS_CASES)
@pytest.mark.parametrize("max_new_tokens", [3, 8, 9, 20])
@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_eos_every_k_tokens_equals_per_token_check(pair, eos, max_new_tokens, check_every):
    ref, ref_rng = _run(reference_mixed_sample, pair, eos, max_new_tokens)
    got, rng = _run(mixed_sample, pair, eos, max_new_tokens, check_every=check_every)
    assert got == ref  # tokens and log-probs, bit for bit
    assert torch.equal(rng, ref_rng)  # the extra draws past the end were rewound


def test_eos_check_ends_early(pair):
    """Every row ends within a few tokens (60 EOS ids): lengths differ and stay below max_new_tokens."""
    (targets, *_), _ = _run(mixed_sample, pair, EOS_CASES[1], 40)
    assert max(map(len, targets)) < 40 and len(set(map(len, targets))) > 1


@pytest.mark.parametrize("eos", EOS_CASES)
@pytest.mark.parametrize("pad_multiple", [None, 16])
def test_mixed_sampler_static_cache_agrees(pair, eos, pad_multiple, monkeypatch):
    import transformers

    made = []

    class Counted(transformers.StaticCache):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["max_cache_len"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transformers, "StaticCache", Counted)
    ref, ref_rng = _run(reference_mixed_sample, pair, eos, 12)
    got, rng = _run(mixed_sample, pair, eos, 12, static_cache=True, pad_multiple=pad_multiple)
    assert made == [(16 if pad_multiple else 7) + 12] * 2  # one static cache per model: bucketed width + new tokens
    assert got[0] == ref[0] and torch.equal(rng, ref_rng)
    for a, b in zip(got[1:], ref[1:]):  # log-probs: the same up to float rounding (longer masked rows)
        for x, y in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4)


def test_mixed_sampler_compiled_decode_agrees(pair, quick_compile):
    ref, _ = _run(reference_mixed_sample, pair, EOS_CASES[0], 10)
    got, _ = _run(mixed_sample, pair, EOS_CASES[0], 10, static_cache=True, compile=True, pad_multiple=16)
    assert got[0] == ref[0]
    assert quick_compile["stats"]["unique_graphs"] == 2  # one decode graph per model, no recompiles per step
    assert not quick_compile["graph_break"]


def test_old_transformers_api_keeps_the_dynamic_cache():
    from okd.methods.minillm import static_supported

    class Old(torch.nn.Module):  # the cache_position era: no static path for the sampler
        def forward(self, input_ids=None, past_key_values=None, cache_position=None):
            raise AssertionError

        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            raise AssertionError

    assert not static_supported(Old()) and static_supported(tiny_model("llama"))
