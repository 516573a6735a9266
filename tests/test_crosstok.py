"""okd.crosstok, checked against independent computations: alignments against a brute force built from
the token strings (not the offsets), the chain rule against a joint probability table, ULD against
numpy, and the cross-tokenizer path with identical tokenizers against okd.losses.token_divergence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from okd.crosstok import (align_spans, batch_groups, hybrid_loss, positional_pairs, shared_vocab, span_divergence,
                          span_logprobs, span_loss, span_uld_loss, token_byte_spans, token_bytes, token_logprobs,
                          uld_loss)
from okd.losses import token_divergence

tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["Hello world, café au lait.", "The cat sat on the mat, the hat.", "  Leading spaces and 中文 here",
          "emoji 😀 and é\n\nnew  lines", " naïve 中 😀😀!", "the cat and the hat"]
TEXTS = CORPUS + ["Hello 中文 world 😀 the cat", "cat  😀\n mat."]
WS = b" \t\n\r\x0b\x0c"


def _char_tokenizer():
    """SentencePiece-like, one token per character: Metaspace (`▁`, prepended), BOS added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=1, special_tokens=["<bos>"]))  # no merges
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return tok


def _suffix_tokenizer():
    """Whitespace as a suffix (`Hello |world`, the opposite of `▁`/`Ġ`): BPE over characters, a few merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S+\s*|\s+"), "isolated")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=60))
    return tok


def _bpe_tokenizer(trim):
    """Byte-level BPE with a few merges, so that multibyte characters are split across tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=trim)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=256 + 40,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def toks():
    return {"char": _char_tokenizer(), "suffix": _suffix_tokenizer(), "bpe": _bpe_tokenizer(False),
            "bpe_trim": _bpe_tokenizer(True)}


# --- the brute force: byte contents from token strings, boundaries by set intersection ---------------

def _gpt2_bytes():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _contents(enc, text, byte_level):
    """Each token's bytes of text (b'' for added tokens), from its string; a prepended `▁` holds none."""
    table = _gpt2_bytes()
    out = [b"" if sp else (bytes(table[c] for c in t) if byte_level else t.replace("▁", " ").encode())
           for t, sp in zip(enc.tokens, enc.special_tokens_mask)]
    if b"".join(out) != text.encode():  # Metaspace's prepended space is in no text
        first = next(i for i, sp in enumerate(enc.special_tokens_mask) if not sp)
        assert out[first][:1] == b" "
        out[first] = out[first][1:]
    assert b"".join(out) == text.encode()
    return out


def _brute_pairs(text, t_cont, s_cont, exact_inside_chars):
    data = text.encode()

    def cuts(cont):
        pos = np.cumsum([0] + [len(c) for c in cont]).tolist()
        keep = [p for p in pos if exact_inside_chars or p == len(data) or (data[p] & 0xC0) != 0x80]
        return sorted(set(keep))

    t, s = cuts(t_cont), cuts(s_cont)
    exact = set(t) & set(s)
    pairs = [(p, p) for p in exact]
    runs, p = [], 0
    while p < len(data):  # maximal whitespace runs: their positions r0..r1
        if data[p] in WS:
            r0 = p
            while p < len(data) and data[p] in WS:
                p += 1
            runs.append((r0, p))
        p += 1
    for r0, r1 in runs:
        tt, ss = [q for q in t if r0 <= q <= r1], [q for q in s if r0 <= q <= r1]
        if tt and ss and not any(r0 <= q <= r1 for q in exact):
            pairs.append((tt[0], ss[0]))
    return sorted(pairs)


def _spans(enc, text, byte_level, pieces, special=False):
    pieces = [token_bytes(t, byte_level) for t in enc.tokens] if pieces else None
    return token_byte_spans(text, enc.offsets, pieces=pieces, special=enc.special_tokens_mask if special else None)


def _found_pairs(al, t, s):
    pairs = [(int(t.spans[a, 0]), int(s.spans[b, 0])) for a, b in zip(al.teacher[:, 0], al.student[:, 0])]
    if len(al.teacher):
        pairs.append((int(t.spans[al.teacher[-1, 1], 1]), int(s.spans[al.student[-1, 1], 1])))
    return pairs


@pytest.mark.parametrize("bpe, pieces", [("bpe", True), ("bpe", False), ("bpe_trim", True), ("bpe_trim", False)])
@pytest.mark.parametrize("teacher", ["char", "suffix"])
@pytest.mark.parametrize("text", TEXTS)
def test_groups_match_a_brute_force_alignment(toks, teacher, bpe, pieces, text):
    te, se = toks[teacher].encode(text), toks[bpe].encode(text)
    t = _spans(te, text, False, pieces)
    s = _spans(se, text, True, pieces, special=bpe == "bpe_trim")  # trimmed offsets need the special mask
    al = align_spans(t, s)
    t_cont, s_cont = _contents(te, text, False), _contents(se, text, True)
    if bpe == "bpe" or pieces:  # trimmed offsets misplace whitespace tokens: without pieces, only valid groups
        assert _found_pairs(al, t, s) == _brute_pairs(text, t_cont, s_cont, pieces)
    # each group: the same text on both sides, up to whitespace at its ends; groups tile the tokens in order
    for (a0, a1), (b0, b1) in zip(al.teacher.tolist(), al.student.tolist()):
        assert b"".join(t_cont[a0:a1 + 1]).strip(WS) == b"".join(s_cont[b0:b1 + 1]).strip(WS)
    for side, cont in ((al.t_group, t_cont), (al.s_group, s_cont)):
        grouped = [g for g in side.tolist() if g >= 0]
        assert grouped == sorted(grouped) and set(grouped) == set(range(len(al.teacher)))
    # the char tokenizer's BOS is on the teacher side only, and in no group; every text token is in one here
    bos = teacher == "char"
    assert (te.tokens[0] == "<bos>") == bos and al.t_unaligned == bos and al.s_unaligned == 0
    assert not bos or al.t_group[0] == -1


def test_the_test_texts_split_characters_and_spaces(toks):
    """The cases the brute force is there for do occur: characters split across byte-level tokens,
    whitespace tokens with empty (trimmed) offsets, a zero-width prepended `▁`, whitespace on opposite sides."""
    encs = [toks["bpe"].encode(t) for t in TEXTS]
    assert any(a[1] > b[0] for e in encs for a, b in zip(e.offsets, e.offsets[1:]))
    assert any(o[0] == o[1] for t in TEXTS for o in toks["bpe_trim"].encode(t).offsets)
    assert toks["char"].encode("Hello").offsets[1:3] == [(0, 1), (0, 1)]
    inexact = [(a, b) for t in TEXTS for a, b in _brute_pairs(t, _contents(toks["suffix"].encode(t), t, False),
                                                           _contents(toks["bpe"].encode(t), t, True), True) if a != b]
    assert inexact  # suffix vs prefix whitespace: boundaries that only whitespace tolerance pairs


def test_the_offsets_walk_on_handmade_offsets():
    """Where pieces can't be laid out: uncovered bytes go to the next token; a character two tokens share
    is cut by their byte lengths (an exact boundary), or without them goes whole to the later token and
    its cut is no boundary."""
    text = "ab 😀c"  # bytes: a b ' ' 😀(3..7) c(7)
    off = [(0, 2), (3, 4), (3, 5)]  # 'ab', 'Ġð' trimmed to the emoji, 'ŁĺĢc' sharing it
    sp = token_byte_spans(text, off, pieces=[b"AB", b" \xf0", b"\x9f\x98\x80c"])  # 'AB': no layout
    assert sp.spans.tolist() == [[0, 2], [2, 4], [4, 8]] and sp.boundary.all()
    sp = token_byte_spans(text, off)
    assert sp.spans.tolist() == [[0, 2], [2, 3], [3, 8]] and sp.boundary.tolist() == [True, True, False]
    assert sp.snapped.tolist() == [[0, 2], [2, 2], [2, 8]]  # the cut after the space snaps back over it
    laid = token_byte_spans(text, off, pieces=[b"ab", b" \xf0", b"\x9f\x98\x80c"])
    assert laid.spans.tolist() == [[0, 2], [2, 4], [4, 8]]
    window = token_byte_spans("xy" + text, [(0, 0), (0, 2)] + [(a + 2, b + 2) for a, b in off], window=(2, 8))
    assert window.spans.tolist() == [[-1, -1], [-1, -1], [0, 2], [2, 3], [3, 8]]
    # a token sharing a character with one left out (reaching outside the window) has unknown bytes in it
    off = [(0, 1), (1, 3), (2, 4)]  # 'a', 'bð', 'ŁĺĢc' over "ab😀c"
    assert token_byte_spans("ab😀c", off, window=(0, 3)).spans.tolist() == [[0, 1], [-1, -1], [-1, -1]]
    assert token_byte_spans("ab😀c", off, window=(2, 4)).spans.tolist() == [[-1, -1]] * 3
    exact = token_byte_spans("ab😀c", off, window=(2, 4), pieces=[b"a", b"b\xf0", b"\x9f\x98\x80c"])
    assert exact.spans.tolist() == [[-1, -1], [-1, -1], [1, 5]]  # with pieces, its start is known
    # laid out from where the offsets start, not from the first place the pieces would fit
    assert token_byte_spans("aaaa", [(0, 1), (1, 2), (2, 4)], special=[1, 0, 0], pieces=[b"a", b"a", b"aa"]
                            ).spans.tolist() == [[-1, -1], [1, 2], [2, 4]]


def test_whitespace_runs_pair_their_first_cuts():
    """`ab| |␣cd` vs `ab␣␣|cd`: no common cut in the run of spaces; the first cuts of each side in it pair."""
    text = "ab  cd"
    t = token_byte_spans(text, [(0, 2), (2, 3), (3, 6)])
    s = token_byte_spans(text, [(0, 4), (4, 6)])
    al = align_spans(t, s)
    assert al.teacher.tolist() == [[0, 0], [1, 2]] and al.student.tolist() == [[0, 0], [1, 1]]
    swapped = align_spans(s, t)
    assert swapped.teacher.tolist() == al.student.tolist() and swapped.student.tolist() == al.teacher.tolist()


@pytest.mark.parametrize("name", ["char", "suffix", "bpe", "bpe_trim"])
def test_identical_tokenizers_give_one_to_one_groups(toks, name):
    for text in TEXTS:
        enc = toks[name].encode(text)
        sp = _spans(enc, text, name != "char", True, special=True)
        al = align_spans(sp, sp)
        text_tokens = torch.tensor([not m for m in enc.special_tokens_mask])
        assert (al.teacher[:, 0] == al.teacher[:, 1]).all() and (al.student == al.teacher).all()
        assert (al.t_group[text_tokens] == torch.arange(int(text_tokens.sum()))).all()


def test_the_window_leaves_template_tokens_out(toks):
    answer = "the cat 😀 sat."
    text = "### Response:\n" + answer + "\n"
    a = text.index(answer)
    enc = toks["bpe"].encode(text)
    sp = token_byte_spans(text, enc.offsets, window=(a, a + len(answer)),
                          pieces=[token_bytes(t, True) for t in enc.tokens])
    inside = [o[0] >= a and o[1] <= a + len(answer) for o in enc.offsets]
    assert ((sp.spans[:, 0] >= 0) == torch.tensor(inside)).all()
    assert sp.spans[torch.tensor(inside)].max() == len(answer.encode())
    al = align_spans(sp, _spans(toks["char"].encode(answer), answer, False, True))
    assert al.t_unaligned == len(inside) - sum(inside) and al.s_unaligned == 1  # template / BOS


# --- chain rule ------------------------------------------------------------------------------------

def test_span_logprob_is_the_chain_rule_of_a_joint_distribution():
    """A joint table over 5-token sequences; the conditionals that teacher forcing gives are its ratios of
    marginals. The merged group log-probabilities must be the log-ratios of the marginals themselves."""
    g = torch.Generator().manual_seed(0)
    v, n = 4, 5
    joint = torch.rand([v] * n, dtype=torch.float64, generator=g)
    joint /= joint.sum()
    y = [2, 0, 3, 1, 1]

    def marginal(t):  # P(y_<t)
        return float(joint[tuple(y[:t])].sum()) if t else 1.0

    # row t: an unnormalised log of P(y_<t, v), plus a constant (normalisation is the code's job)
    logits = torch.stack([joint[tuple(y[:t])].sum(dim=tuple(range(1, n - t))).log() + 3.0 * t
                          if t < n - 1 else joint[tuple(y[:t])].log() - 7.0 for t in range(n)])
    lp = token_logprobs(logits, torch.tensor(y), torch.arange(n), chunk_size=2)
    got = span_logprobs(lp, torch.tensor([0, 0, 1, 1, 1]), 2)
    want = torch.tensor([np.log(marginal(2)), np.log(marginal(5) / marginal(2))], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.sum(), joint[tuple(y)].log(), rtol=0, atol=1e-12)


# --- losses ----------------------------------------------------------------------------------------

def _one_side(tok, text, byte_level, dim, seed):
    enc = tok.encode(text)
    sp = _spans(enc, text, byte_level, True, special=True)
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(len(enc.ids), dim, dtype=torch.float64, generator=g)).requires_grad_()
    return enc, sp, logits, torch.tensor(enc.ids)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_identical_tokenizers_hybrid_equals_token_divergence(toks, kind):
    tok = toks["bpe"]
    text = TEXTS[6]
    vocab = tok.get_vocab()
    enc, sp, zs, ids = _one_side(tok, text, True, len(vocab), 1)
    zt = torch.randn(zs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    shared = shared_vocab(vocab, vocab)
    assert len(shared.teacher) == len(vocab) and (shared.teacher == shared.student).all()
    groups = batch_groups([align_spans(sp, sp)], [0], [0])
    out = hybrid_loss(zs, zt, groups, shared, ids, ids, kind=kind, temperature=2.0, chunk_size=5)
    assert out.exact.all() and out.counts["exact"] == len(ids)
    want = token_divergence(kind, zs, zt, temperature=2.0)
    torch.testing.assert_close(out.values, want, rtol=0, atol=1e-12)
    w = torch.rand(len(ids), dtype=torch.float64)
    (g_got,) = torch.autograd.grad((w * out.values).sum(), zs)
    (g_want,) = torch.autograd.grad((w * want).sum(), zs)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_uld(zs, zt):
    p, q = -np.sort(-_np_softmax(zt), -1), -np.sort(-_np_softmax(zs), -1)
    w = max(p.shape[-1], q.shape[-1])
    p, q = np.pad(p, ((0, 0), (0, w - p.shape[-1]))), np.pad(q, ((0, 0), (0, w - q.shape[-1])))
    return np.abs(p - q).sum(-1)


def test_hybrid_across_tokenizers_is_exact_over_the_shared_vocabulary(toks):
    text = TEXTS[6]
    tv, sv = toks["char"].get_vocab(), toks["bpe"].get_vocab()
    te, t, zt, t_ids = _one_side(toks["char"], text, False, len(tv), 3)
    se, s, zs, s_ids = _one_side(toks["bpe"], text, True, len(sv), 4)
    shared = shared_vocab(tv, sv)
    assert token_bytes("▁", False) == token_bytes("Ġ", True) and (tv["▁"], sv["Ġ"]) in set(
        zip(shared.teacher.tolist(), shared.student.tolist()))
    groups = batch_groups([align_spans(t, s)], [0], [0])
    out = hybrid_loss(zs, zt.detach(), groups, shared, s_ids, t_ids, kind="fkl")
    assert 0 < out.counts["exact"] < out.counts["groups"]
    zt_np, zs_np = zt.detach().numpy(), zs.detach().numpy()
    for g in range(len(out.values)):
        r_t, r_s = int(groups.t_first[g]), int(groups.s_first[g])
        if out.exact[g]:  # KL of the two distributions restricted to the shared ids and renormalised
            p = _np_softmax(zt_np[r_t, shared.teacher.numpy()])
            q = _np_softmax(zs_np[r_s, shared.student.numpy()])
            want = (p * np.log(p / q)).sum()
        else:  # k = 256 ≥ the char vocabulary: ULD is exact
            want = _np_uld(zs_np[r_s:r_s + 1], zt_np[r_t:r_t + 1])[0]
        assert abs(float(out.values[g].detach()) - want) < 1e-10


def test_uld_equals_numpy_sorted_l1_and_top_k_converges():
    g = torch.Generator().manual_seed(5)
    zt = torch.randn(6, 7, dtype=torch.float64, generator=g) * 2
    zs = torch.randn(6, 11, dtype=torch.float64, generator=g) * 2
    rows = torch.arange(6)
    full = _np_uld(zs.numpy(), zt.numpy())
    for k in (7, 11, 256):  # k ≥ the shorter vocabulary: exact
        np.testing.assert_allclose(uld_loss(zs, zt, rows, rows, k=k, chunk_size=4).values.numpy(), full,
                                   rtol=0, atol=1e-12)
    p, q = -np.sort(-_np_softmax(zt.numpy()), -1), -np.sort(-_np_softmax(zs.numpy()), -1)
    prev = np.zeros(6)
    for k in range(1, 7):
        got = uld_loss(zs, zt, rows, rows, k=k).values.numpy()
        bound = 2 * np.minimum(p[:, k:].sum(-1), q[:, k:].sum(-1))
        assert (got >= prev - 1e-12).all() and (got <= full + 1e-12).all() and (full - got <= bound + 1e-12).all()
        prev = got
    assert (full - uld_loss(zs, zt, rows, rows, k=1).values.numpy() > 1e-3).any()  # top-1 is not exact here


def test_span_uld_pairs_group_starts_and_positional_pairs_truncate(toks):
    text = TEXTS[2]
    te, t, zt, _ = _one_side(toks["char"], text, False, 9, 6)
    se, s, zs, _ = _one_side(toks["bpe"], text, True, 13, 7)
    groups = batch_groups([align_spans(t, s)], [0], [0])
    got = span_uld_loss(zs, zt, groups).values
    torch.testing.assert_close(got, torch.from_numpy(_np_uld(zs.detach().numpy()[groups.s_first],
                                                             zt.detach().numpy()[groups.t_first])))
    tr, sr = positional_pairs([torch.arange(5), torch.arange(10, 12)], [torch.arange(3), torch.arange(20, 24)])
    assert tr.tolist() == [0, 1, 2, 10, 11] and sr.tolist() == [0, 1, 2, 20, 21]


def test_span_divergence_is_a_bernoulli_kl_and_span_loss_uses_the_chain_rule(toks):
    lt = torch.tensor([-0.1, -2.0, -30.0, 0.0, -1.0], dtype=torch.float64)
    ls = torch.tensor([-0.5, -2.0, -25.0, -1e-9, 0.0], dtype=torch.float64, requires_grad=True)
    a, b = lt.numpy().clip(max=-1e-12), ls.detach().numpy().clip(max=-1e-12)  # log P_T, log P_S
    want = np.exp(a) * (a - b) - np.expm1(a) * (np.log(-np.expm1(a)) - np.log(-np.expm1(b)))
    got = span_divergence(ls, lt)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-15)  # (numpy's log near 1)
    assert got[1] == 0 and (got >= 0).all()
    got.sum().backward()
    assert torch.isfinite(ls.grad).all()
    torch.testing.assert_close(span_divergence(ls, lt, "sq"), (lt - ls).square())

    text = TEXTS[3]
    te, t, zt, t_ids = _one_side(toks["char"], text, False, len(toks["char"].get_vocab()), 8)
    se, s, zs, s_ids = _one_side(toks["bpe"], text, True, len(toks["bpe"].get_vocab()), 9)
    groups = batch_groups([align_spans(t, s)], [0], [0])
    out = span_loss(zs, zt, groups, s_ids, t_ids)
    lp_t = torch.log_softmax(zt.detach(), -1)[torch.arange(len(t_ids)), t_ids]
    lp_s = torch.log_softmax(zs.detach(), -1)[torch.arange(len(s_ids)), s_ids]
    al = align_spans(t, s)
    for g in range(len(al.teacher)):
        (a0, a1), (b0, b1) = al.teacher[g].tolist(), al.student[g].tolist()
        want = span_divergence(lp_s[b0:b1 + 1].sum()[None], lp_t[a0:a1 + 1].sum()[None])
        torch.testing.assert_close(out.values[g:g + 1].detach(), want)


# --- a real tokenizer ------------------------------------------------------------------------------

SMOL = Path("/root/.cache/okd/models/smollm2-135m-instruct")


def test_real_smollm2_tokenizer_with_its_chat_template(toks):
    if not (SMOL / "tokenizer.json").exists():
        pytest.skip(f"no SmolLM2 tokenizer at {SMOL}")
    transformers = pytest.importorskip("transformers")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(SMOL))
    except Exception as e:  # noqa: BLE001 - any failure to build it offline is a skip
        pytest.skip(f"cannot build the SmolLM2 tokenizer offline: {e}")
    assert tok.is_fast
    answer = "Paris is the capital 😀 of France — café, 中文.\n\nYes  indeed."
    text = tok.apply_chat_template([{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": answer}],
                                   tokenize=False)
    a = text.rindex(answer)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, return_special_tokens_mask=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    t = token_byte_spans(text, enc["offset_mapping"], window=(a, a + len(answer)), special=enc["special_tokens_mask"],
                         pieces=[token_bytes(p, True) for p in pieces])
    same = align_spans(t, t)
    assert (same.teacher[:, 0] == same.teacher[:, 1]).all() and len(same.teacher) == int((t.spans[:, 0] >= 0).sum())
    assert any(o[1] > n[0] for o, n in zip(enc["offset_mapping"], enc["offset_mapping"][1:]))  # the emoji is split
    se = toks["bpe_trim"].encode(answer)  # another byte-level BPE, without the template
    al = align_spans(t, _spans(se, answer, True, True, special=True))
    assert len(al.teacher) > 10 and al.s_unaligned == 0
    assert al.t_unaligned == int((t.spans[:, 0] < 0).sum())  # the template's tokens
    s_cont = _contents(se, answer, True)
    for (a0, a1), (b0, b1) in zip(al.teacher.tolist(), al.student.tolist()):
        assert tok.convert_tokens_to_string(pieces[a0:a1 + 1]).strip().encode() == b"".join(s_cont[b0:b1 + 1]).strip()
    char_vocab = toks["char"].get_vocab()
    shared = shared_vocab(tok.get_vocab(), char_vocab)
    pairs = set(zip(shared.teacher.tolist(), shared.student.tolist()))
    assert (tok.convert_tokens_to_ids("Ġ"), char_vocab["▁"]) in pairs
    assert (tok.convert_tokens_to_ids("Ã©"), char_vocab["é"]) in pairs  # byte-level 'Ã©' is é's two bytes
