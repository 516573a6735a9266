"""Generation, ROUGE-L, exposure bias (ExAccErr), teacher-forced stats and the eval/analyze commands."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from okd.cli import main
from okd.eval.exposure import exacc_err, exacc_err_curve, exposure_bias, step_kls
from okd.eval.rouge import rouge_l, rouge_l_per_example
from okd.eval.runner import quick_rouge
from okd.eval.teacher_forced import summarize, teacher_forced_stats
from okd.generation import generate
from okd.models.tiny import save_tiny, tiny_model

SEED_TASKS = str(Path(__file__).resolve().parents[1] / "okd" / "data" / "seed_tasks.jsonl")  # shipped in the package


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models gain nothing from threads, and on a busy shared CPU 2 threads spin-wait (10x slower)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "student", seed=0), save_tiny(root / "teacher", seed=1, layers=3)


# ------------------------------------------------------------------ ROUGE-L

def test_rouge_matches_rouge_score_and_hand_value():
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "Running dogs run quickly.", "", "completely different"]
    refs = ["the cat is on the mat", "a dog runs quick", "nonempty reference", "nothing shared here"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    got = rouge_l_per_example(preds, refs)
    assert got == pytest.approx(expected)
    # hand check: LCS "the cat on the mat" = 5 of 6 tokens on both sides -> F1 = 5/6
    assert got[0] == pytest.approx(100 * 5 / 6)
    assert got[2] == 0.0
    assert rouge_l(preds, refs) == pytest.approx(sum(expected) / 4)
    with pytest.raises(ValueError):
        rouge_l(["a"], [])


def test_unicode_rouge_tokenizer_scores_every_script_and_the_default_warns():
    """rouge-score's tokenizer drops non-ASCII text (an identical answer scores 0); the Unicode one scores it
    100, tokenises CJK character by character (hand LCS) and agrees with the default on English."""
    from okd.eval.rouge import UnicodeTokenizer, reference_loss, tokenizer_warning

    same = ["猫坐在垫子上", "Кошка сидела на коврике", "Ça coûte très cher"]
    assert rouge_l_per_example(same[:2], same[:2]) == [0.0, 0.0]  # the paper's tokenizer: nothing left
    assert rouge_l_per_example(same, same, "unicode") == [100.0, 100.0, 100.0]
    assert UnicodeTokenizer().tokenize("猫坐 on mats!") == ["猫", "坐", "on", "mat"]
    # LCS of 猫坐在垫子上 and 猫在垫上: 猫在垫上 = 4 of 6 and 4 of 4 -> F1 = 2*(4/6)*1/(4/6+1) = 0.8
    assert rouge_l_per_example(["猫在垫上"], ["猫坐在垫子上"], "unicode")[0] == pytest.approx(80.0)
    english = (["the cat sat on the mat", "Running dogs run quickly."], ["the cat is on the mat", "a dog runs quick"])
    assert rouge_l_per_example(*english, "unicode") == pytest.approx(rouge_l_per_example(*english))
    assert reference_loss(["猫坐在垫子上"]) == 1.0 and reference_loss(["plain words"]) == 0.0
    assert tokenizer_warning("zh", same[:2], "default").startswith("ROUGE-L on zh: rouge-score's tokenizer keeps "
                                                                   "ASCII letters and digits only, and drops 100%")
    assert tokenizer_warning("en", english[1], "default") is None and tokenizer_warning("zh", same, "unicode") is None


def test_eval_predictions_with_the_unicode_tokenizer(tmp_path, capsys):
    from okd.cli import main

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prediction": "猫坐在垫子上", "output": "猫坐在垫子上"}, ensure_ascii=False) + "\n")
    assert main(["eval", "--predictions", str(f), "-o", str(tmp_path / "d.json")]) == 0
    assert "drops 100% of its references' characters" in capsys.readouterr().err
    assert json.loads((tmp_path / "d.json").read_text())["datasets"]["p"]["rougeL"]["mean"] == 0.0
    assert main(["eval", "--predictions", str(f), "--rouge-tokenizer", "unicode", "-o", str(tmp_path / "u.json")]) == 0
    assert json.loads((tmp_path / "u.json").read_text())["datasets"]["p"]["rougeL"]["mean"] == 100.0


# ------------------------------------------------------------------ generation

def test_same_seed_same_samples_and_rng_untouched(tok, prompts):
    m = tiny_model("llama", seed=0)
    m.generation_config.top_k = 1  # a checkpoint default that must not leak in (it would make seeds agree)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate(m, tok, prompts, max_new_tokens=12, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # global RNG untouched
    b = generate(m, tok, prompts, max_new_tokens=12, seed=7)
    c = generate(m, tok, prompts, max_new_tokens=12, seed=8)
    assert a.sequences == b.sequences and a.texts == b.texts
    assert a.sequences != c.sequences
    assert len(a.sequences) == len(prompts) == len(a.finished) == len(a.texts)
    assert a.num_tokens == sum(len(s) + f for s, f in zip(a.sequences, a.finished))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_cache_and_left_padding(tok, prompts, arch):
    m = tiny_model(arch, seed=0)
    cached = generate(m, tok, prompts, max_new_tokens=10, greedy=True, batch_size=4)
    uncached = generate(m, tok, prompts, max_new_tokens=10, greedy=True, batch_size=4, use_cache=False)
    single = [generate(m, tok, [p], max_new_tokens=10, greedy=True, batch_size=1).sequences[0] for p in prompts]
    assert cached.sequences == uncached.sequences
    assert cached.sequences == single  # left padding in a mixed-length batch changes nothing


def test_eos_cut_and_vocab_limit(tok, prompts):
    m = tiny_model("qwen2", seed=0)
    res = generate(m, tok, prompts, max_new_tokens=8, seed=0, vocab_limit=200)
    assert all(t < 200 for s in res.sequences for t in s)
    assert not any(res.finished)  # EOS (256) is above the limit, so never sampled
    # zero head: all logits tie and greedy picks id 0; declaring 0 an EOS ends every answer at once
    with torch.no_grad():
        m.lm_head.weight.zero_()
    m.generation_config.eos_token_id = [256, 0]
    res = generate(m, tok, prompts, max_new_tokens=8, greedy=True)
    assert res.sequences == [[]] * len(prompts) and all(res.finished)
    assert res.texts == [""] * len(prompts) and res.num_tokens == len(prompts)


def test_generate_with_peft_and_restores_mode(tok, prompts):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(tiny_model("llama", seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    m.train()
    res = generate(m, tok, prompts, max_new_tokens=6, seed=0)
    assert m.training and len(res.sequences) == len(prompts)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_seeds_reads_prompts_once_and_matches_separate_calls(arch, tok):
    """Evaluation's S samples per prompt: one call, the prompt prefix read once per batch, and per seed
    the very tokens S separate seeded calls give (each seed keeps its own RNG stream across batches)."""
    import functools

    from okd.generation import generate_seeds

    m = tiny_model(arch, seed=0)
    widths = []
    forward = m.forward

    @functools.wraps(forward)  # generate reads the forward's signature
    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    m.forward = spy
    long = [tok.encode(t) for t in ["Hello there", "Write a poem about the sea, please.", "xy", "Two words", "ab"]]
    one = [tok.encode("x"), tok.encode("y")]  # one-token prompts: no prefix to share, read per seed
    for prompts in (long, long + one[:1], one):
        for greedy in (False, True):
            widths.clear()
            separate = [generate(m, tok, prompts, max_new_tokens=10, seed=k, batch_size=2, greedy=greedy)
                        for k in range(3)]
            read_separately = sum(widths)
            widths.clear()
            joint = generate_seeds(m, tok, prompts, seeds=[0, 1, 2], max_new_tokens=10, batch_size=2, greedy=greedy)
            assert [g.sequences for g in joint] == [g.sequences for g in separate]
            assert [g.finished for g in joint] == [g.finished for g in separate]
            assert [g.num_tokens for g in joint] == [g.num_tokens for g in separate]
            if not greedy:
                assert joint[0].sequences != joint[1].sequences  # the seeds are distinct streams
            # each batch's prefix is read once instead of three times
            assert (sum(widths) < read_separately) == (prompts is not one)
    assert generate_seeds(m, tok, [], seeds=[0, 1], max_new_tokens=3)[1].sequences == []
    with pytest.raises(ValueError, match="seeds"):
        generate_seeds(m, tok, long, seeds=[None, None], max_new_tokens=3)


def _early_stopping(arch):
    """A tiny model whose answers end after ~6 tokens (40 more stop ids): rows end at different steps."""
    m = tiny_model(arch, seed=0)
    m.generation_config.eos_token_id = [256, *range(200, 240)]
    return m


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compact_greedy_equals_transformers_generate(arch, tok, prompts):
    """Rows that end leave the batch (and its KV cache); the greedy answers are generate's, token for token."""
    m = tiny_model(arch, seed=0)
    many = prompts + [tok.encode(t) for t in ["abc", "The sea is", "Why?", "one two three four"]]
    ngram = dict(greedy=True, no_repeat_ngram_size=1)  # (a tiny model's greedy answer repeats one token)
    free = generate(m, tok, many, max_new_tokens=12, **ngram).sequences
    # stop ids taken from the free answers at different steps, so the greedy answers end apart
    m.generation_config.eos_token_id = [256, *{s[(i % 3) * 4 + 1] for i, s in enumerate(free)}]
    for batch in (3, 8):
        ref = generate(m, tok, many, max_new_tokens=12, batch_size=batch, **ngram)
        got = generate(m, tok, many, max_new_tokens=12, batch_size=batch, compact=True, **ngram)
        assert got.sequences == ref.sequences and got.finished == ref.finished
        assert len({len(s) for s in ref.sequences}) > 2 and any(ref.finished)  # rows did end apart


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compact_sampling_draws_from_the_models_own_distribution(arch, tok, prompts, monkeypatch):
    """Each sampled token of the compacting loop is drawn from the distribution a full forward of that
    row alone (no cache, no padding) gives at its position, with top-k and temperature applied: the
    cache, positions and masks stay right as rows leave. Seeds: one call = separate calls."""
    from okd.generation import generate_seeds

    m = _early_stopping(arch)
    draws = []
    multinomial = torch.multinomial

    def record(probs, num_samples):
        token = multinomial(probs, num_samples)
        draws.append((probs.clone(), token.squeeze(1).clone()))
        return token

    monkeypatch.setattr(torch, "multinomial", record)
    res = generate(m, tok, prompts, max_new_tokens=10, seed=3, batch_size=4, temperature=0.7, top_k=20, compact=True)
    lengths = [len(s) + f for s, f in zip(res.sequences, res.finished)]
    assert any(res.finished) and len(set(lengths)) > 1
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # generate's batch order
    for t, (probs, token) in enumerate(draws):
        alive = [i for i in order if lengths[i] > t]
        assert probs.shape[0] == len(alive)
        for j, i in enumerate(alive):
            answer = res.sequences[i] + ([256] if res.finished[i] and t == lengths[i] - 1 else [])
            ids = torch.tensor([prompts[i] + answer[:t]])
            with torch.no_grad():
                logits = m(input_ids=ids).logits[0, -1] / 0.7
            logits[logits < logits.topk(20).values[-1]] = float("-inf")
            want = torch.softmax(logits, -1)
            assert torch.allclose(probs[j], want, atol=1e-5), (arch, t, i, (probs[j] - want).abs().max())
            assert int(token[j]) in answer[t:t + 1] or int(token[j]) in range(200, 240)
    monkeypatch.setattr(torch, "multinomial", multinomial)
    joint = generate_seeds(m, tok, prompts, seeds=[0, 1], max_new_tokens=10, batch_size=2, compact=True)
    separate = [generate(m, tok, prompts, max_new_tokens=10, seed=k, batch_size=2, compact=True) for k in (0, 1)]
    assert [g.sequences for g in joint] == [g.sequences for g in separate]
    with pytest.raises(ValueError, match="dynamic KV cache"):
        generate(m, tok, prompts, max_new_tokens=3, compact=True, use_cache=False)


def test_eval_seeds_benchmark_runs_tiny(tmp_path):
    """benchmarks/bench_eval_seeds.py --tiny: both ways timed, the same answers, a JSON with the machine."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_eval_seeds.py"
    spec = importlib.util.spec_from_file_location("bench_eval_seeds", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--prompts", "6", "--seeds", "2", "--rounds", "1", "--max-new-tokens", "4",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["identical_answers"] == "12/12" and res["speedup"] > 0 and res["machine"]


# ------------------------------------------------------------------ exposure bias

def test_exacc_err_hand_values_and_zero_conventions():
    res = exacc_err_curve([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert res["R"] == [1.0, 3.0, 6.0]
    assert res["eps"] == [1.0, 1.0, 1.0]
    assert res["curve"] == pytest.approx([0.0, 50.0, 100.0])
    assert exacc_err(0.0, 0.0, 5) == 0.0  # student = teacher
    assert exacc_err(0.5, 0.0, 5) is None  # undefined, never inf/NaN
    assert exacc_err(1.0, 2.0, 5) == pytest.approx(-50.0)


class Bigram(torch.nn.Module):
    """A fake causal LM whose next-token logits depend only on the current token: logits = table[x]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float64))
        self.head = torch.nn.Embedding(len(table[0]), 1)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        z = self.table[input_ids]
        return SimpleNamespace(logits=z[:, -logits_to_keep:] if logits_to_keep else z)


def _kl(p_logits, q_logits):
    p = [math.exp(x) for x in p_logits]
    q = [math.exp(x) for x in q_logits]
    p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_step_kls_hand_case_with_eos():
    # tokens 0, 1 and 2 (EOS); teacher T and student S are bigram tables
    T = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    S = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    teacher, student = Bigram(T), Bigram(S)
    k0, k1 = _kl(T[0], S[0]), _kl(T[1], S[1])
    prompts = [[0], [1, 1]]
    responses = [[1, 0], [0, 1, 0, 1]]
    finished = [True, False]  # row 0 emitted EOS after "1 0"; row 1 hit the length cap
    kl = step_kls(student, teacher, prompts, responses, finished, max_len=4, pad_token_id=2, vocab_size=3)
    # row 0: steps 1..3 read tokens 0, 1, 0 (step 3 is the EOS step), step 4 is after EOS -> 0
    assert kl[0].tolist() == pytest.approx([k0, k1, k0, 0.0])
    # row 1: prompt ends in 1, then 0 1 0 -> steps read 1, 0, 1, 0
    assert kl[1].tolist() == pytest.approx([k1, k0, k1, k0])
    # R and l·ε from these per-step means give ExAccErr by hand
    q_steps = kl.mean(0).tolist()
    p_steps = [k0, k0, k0, k0]
    res = exacc_err_curve(q_steps, p_steps)
    l = 2
    R = (k0 + k1) / 2 + (k1 + k0) / 2
    assert res["curve"][l - 1] == pytest.approx(100 * (R - 2 * k0) / (2 * k0))


def test_exposure_bias_student_equals_teacher_is_zero(tok, prompts):
    m = tiny_model("llama", seed=0)
    res = exposure_bias(m, m, prompts[:2], tokenizer=tok, samples=2, max_len=8, length=4)
    assert res["at_l"] == 0.0
    assert all(v == 0.0 for v in res["curve"]) and len(res["curve"]) == 8
    assert res["R_at_l"] == 0.0 and res["eps_at_l"] == 0.0


def test_exposure_bias_different_models_finite(tok, prompts):
    s, t = tiny_model("llama", seed=0), tiny_model("llama", seed=1, layers=3)
    res = exposure_bias(s, t, prompts[:2], tokenizer=tok, samples=2, max_len=8, length=4, batch_size=3)
    assert len(res["curve"]) == 8 and math.isfinite(res["at_l"])
    assert res["eps_at_l"] > 0 and res["R_at_l"] > 0
    assert res["curve"][0] == pytest.approx(0.0)  # step 1 reads only the prompt under both samplers
    assert res["at_l"] == pytest.approx(100 * (res["R_at_l"] - 4 * res["eps_at_l"]) / (4 * res["eps_at_l"]))
    assert all(0.0 <= a <= 1.0 for a in res["alive_student"])


# ------------------------------------------------------------------ teacher-forced stats

def _batches(tok, n=6):
    from okd.data import Collator, encode_examples, load_examples

    # 320 byte tokens: the Alpaca header (~100) and the instruction fit (the data layer refuses prompts cut to
    # the template's tail)
    feats, _ = encode_examples(load_examples(SEED_TASKS, limit=n), tok, "alpaca", 320)
    return [Collator(tok.pad_token_id)(feats[i:i + 3]) for i in range(0, len(feats), 3)]


def test_teacher_forced_stats(tok):
    s, t = tiny_model("llama", seed=0), tiny_model("qwen2", seed=1)
    batches = _batches(tok)
    scored = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    same = teacher_forced_stats(s, s, batches)
    assert same["overall"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["overall"]["top1_agreement"] == 1.0
    assert same["overall"]["tokens"] == scored
    diff = teacher_forced_stats(s, t, batches)
    assert diff["overall"]["kl"] > 0
    assert sum(diff["buckets"][b]["tokens"] for b in ("easy", "medium", "hard")) == scored
    lo, hi = diff["thresholds"]
    assert diff["buckets"]["easy"]["unc"] <= lo + 1e-12 < hi + 1e-12 < diff["buckets"]["hard"]["unc"] + 1e-12


def test_summarize_fixed_thresholds():
    # columns: kl, agree, std_s, std_t, unc
    rows = torch.tensor([[1.0, 1, 1, 1, 0.05], [2.0, 0, 1, 1, 0.3], [3.0, 0, 1, 1, 0.9], [5.0, 1, 1, 1, 0.95]],
                        dtype=torch.float64)
    s = summarize(rows, thresholds=(0.1, 0.5))
    assert [s["buckets"][b]["tokens"] for b in ("easy", "medium", "hard")] == [1, 1, 2]
    assert s["buckets"]["hard"]["kl"] == 4.0 and s["overall"]["top1_agreement"] == 0.5


def test_quick_rouge(tok):
    from okd.data import load_examples

    m = tiny_model("llama", seed=0).train()
    ex = load_examples(SEED_TASKS, limit=3)
    score = quick_rouge(m, tok, ex, "alpaca", max_new_tokens=6, max_prompt_length=64, seed=0, batch_size=2)
    assert 0.0 <= score <= 100.0 and m.training


# ------------------------------------------------------------------ commands

def test_eval_predictions_cli(tmp_path, capsys):
    f = tmp_path / "preds.jsonl"
    recs = [{"prediction": "the cat sat on the mat", "output": "the cat is on the mat"},
            {"prediction": "hello world", "output": "hello world"}]
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "res.json"
    assert main(["eval", "--predictions", str(f), "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["datasets"]["preds"]["rougeL"]["mean"] == pytest.approx((100 * 5 / 6 + 100) / 2)
    assert "| preds | 2 |" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prediction": "x"}) + "\n")
    assert main(["eval", "--predictions", str(bad), "-o", str(out)]) == 2
    assert "'output'" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00garbage\n", "not UTF-8 text"),
    (b"[" * 100000 + b"\n", "line 1: "),  # nested too deeply for json (RecursionError) or not JSON
    (b'{"prediction": "a", "output": "b"}\n{"prediction": ' + b"1" * 5000 + b"}\n", "line 2: not valid JSON"),
    (b'{"prediction": "a", "output": "b"}\nnot json\n', "line 2: not valid JSON"),
])
def test_bad_prediction_files_are_one_line_errors(tmp_path, content, message):
    from okd.errors import OkdError
    from okd.eval.runner import read_predictions

    f = tmp_path / "p.jsonl"
    f.write_bytes(content)
    with pytest.raises(OkdError, match=message) as e:
        read_predictions(f)
    assert "\n" not in str(e.value)


def test_eval_model_cli_end_to_end(model_dirs, tmp_path, capsys):
    student, teacher = model_dirs
    out = tmp_path / "r" / "results.json"
    rc = main(["eval", "--model", str(student), "--teacher", str(teacher), "--data", SEED_TASKS,
               "--limit", "3", "--seeds", "2", "--max-new-tokens", "6", "--batch-size", "2",
               "--exposure-samples", "1", "--exposure-max-len", "6", "--exposure-length", "3", "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    d = res["datasets"]["seed_tasks"]
    assert d["examples"] == 3 and len(d["rougeL"]["per_seed"]) == 2
    assert d["rougeL"]["std"] is not None
    for k in range(2):
        lines = (tmp_path / "r" / f"results.seed_tasks.seed{k}.jsonl").read_text().splitlines()
        rec = json.loads(lines[0])
        assert len(lines) == 3 and {"instruction", "input", "output", "prediction"} <= set(rec)
    assert res["generation"]["tokens"] > 0 and res["generation"]["tokens_per_s"] > 0 and res["wall_s"] > 0
    assert len(d["exposure_bias"]["curve"]) == 6 and d["exposure_bias"]["length"] == 3
    assert set(d["teacher_forced"]["buckets"]) == {"easy", "medium", "hard"}
    assert (tmp_path / "r" / res["exposure_plot"]).stat().st_size > 0
    assert res["exposure_plot"] == "results.exposure.png"
    assert "| seed_tasks | 3 |" in capsys.readouterr().out


def test_analyze_cli_with_students(model_dirs, tmp_path, capsys):
    student, teacher = model_dirs
    out = tmp_path / "an"
    rc = main(["analyze", "--teacher", str(teacher), "--data", SEED_TASKS, "--students", str(student),
               str(teacher), "--labels", "fkl τ=1", "self", "--limit", "4", "--max-length", "320", "-o", str(out)])
    assert rc == 0
    stats = json.loads((out / "analysis.json").read_text())["students"]
    assert stats["self"]["overall"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "analysis.png").stat().st_size > 0
    assert "fkl τ=1" in capsys.readouterr().out


def test_analyze_cli_trains_grid(model_dirs, tmp_path, capsys):
    student, teacher = model_dirs
    out = tmp_path / "grid"
    args = ["analyze", "--teacher", str(teacher), "--student", str(student), "--data", SEED_TASKS,
            "--divergences", "rkl", "--taus", "2", "--steps", "1", "--limit", "4", "--max-length", "320",
            "--set", "train.batch_size=2", "data.max_length=320", "data.train_limit=8", "-o", str(out)]
    assert main(args) == 0
    stats = json.loads((out / "analysis.json").read_text())["students"]
    assert list(stats) == ["rkl τ=2"] and (out / "runs" / "rkl_tau2" / "student").is_dir()
    from okd.analyze import student_label

    assert student_label(out / "runs" / "rkl_tau2") == ("rkl τ=2", out / "runs" / "rkl_tau2" / "student")
    assert main(args) == 0  # second time the finished run is reused
    assert "reusing" in capsys.readouterr().err


@pytest.mark.parametrize("native, expected", [("1", "bfloat16"), ("0", "float32")])
def test_eval_dtype_fast_is_bf16_only_where_native(model_dirs, tmp_path, monkeypatch, native, expected):
    from okd.precision import resolve_dtype

    monkeypatch.setenv("OKD_CPU_BF16", native)
    assert resolve_dtype("fast") == expected and resolve_dtype("float16") == "float16"
    student, _ = model_dirs
    out = tmp_path / "results.json"
    assert main(["eval", "--model", str(student), "--data", SEED_TASKS, "--limit", "2", "--seeds", "1",
                 "--max-new-tokens", "4", "--dtype", "fast", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["dtype"] == expected
