"""Cross-tokenizer training data: every example encoded by both sides, aligned once, batched together.

Each side formats the example with its own template and tokenizer (okd.data.tokenize's encoder: prompt
and response tokenized separately, response-only labels, the same cuts at data.max_length). The
response text is the shared text: its tokens on each side become byte spans (`token_byte_spans`, with
offsets from the same tokenizer call that gave the ids, and each token's bytes) and the two are
aligned (`align_spans`) once per example, at data-loading time. The EOS each side appends is no text:
where both sides end with their EOS the two form one more 1-1 group (the model pair's shared
vocabulary pairs the two EOS ids), so with identical tokenizers every scored token is in a 1-1 group.

A feature is the student's as in okd.data plus `teacher_input_ids`, `teacher_labels` and `alignment`
(token indices count from the first response token). `CrossCollator` pads the teacher's side next to
the student's and adds the batch's `okd.crosstok.Groups` as tensors `xtok_<field>`. Rows follow the
library's convention and okd's flattening: scored rows are taken row-major over [B, T-1] (okd.methods
.base.Scored), and an example's response tokens are all scored and contiguous, so its response token
j is row r0 + j, r0 = the number of response tokens of the examples before it in the batch.
"""

from __future__ import annotations

import functools
import itertools

import torch

from okd.crosstok.align import Alignment, Groups, align_spans, batch_groups, token_byte_spans
from okd.crosstok.vocab import SharedVocab, is_byte_level, shared_vocab, token_bytes
from okd.data.batching import Collator
from okd.data.tokenize import _CHUNK, _check_prompts_kept, _Encoder, _new_stats
from okd.errors import OkdError

CROSS_HINT = "distil across them with method.cross_tokenizer=hybrid (or uld, span)"
GROUP_KEYS = [f"xtok_{k}" for k in Groups._fields]


def teacher_template(cfg, teacher_tokenizer) -> str:
    """data.teacher_template, else data.template, except `chat` for a teacher without a chat template
    (then alpaca: the teacher still reads the same instruction)."""
    if cfg.data.teacher_template:
        return cfg.data.teacher_template
    if cfg.data.template == "chat" and not getattr(teacher_tokenizer, "chat_template", None):
        return "alpaca"
    return cfg.data.template


def check_fast(tokenizer, role: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise OkdError(f"method.cross_tokenizer aligns tokens by their character offsets, which the {role}'s slow "
                       f"tokenizer ({type(tokenizer).__name__}) does not give; use a fast tokenizer (tokenizer.json)")


@functools.lru_cache(maxsize=1)  # by the two tokenizer objects: setup asks twice (cache check, hybrid), ~1 s each
def pair_vocab(teacher_tokenizer, student_tokenizer) -> SharedVocab:
    """Token pairs both tokenizers spell the same (ids inside both tokenizers), with the two EOS paired."""
    sv = shared_vocab(teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab())
    te, se = teacher_tokenizer.eos_token_id, student_tokenizer.eos_token_id
    keep = (sv.teacher < len(teacher_tokenizer)) & (sv.student < len(student_tokenizer))
    keep &= (sv.teacher != te) & (sv.student != se)  # one-to-one after adding the EOS pair
    t = torch.cat([sv.teacher[keep], torch.tensor([te])])
    s = torch.cat([sv.student[keep], torch.tensor([se])])
    order = torch.argsort(t)
    return SharedVocab(teacher=t[order].contiguous(), student=s[order].contiguous())


class _Side:
    """One tokenizer's encoder, and what its byte spans need."""

    def __init__(self, tokenizer, template: str, max_length: int):
        self.enc = _Encoder(tokenizer, template, max_length)
        self.tok = tokenizer
        self.byte_level = is_byte_level(tokenizer.get_vocab())

    def spans(self, response: str, feature: dict, resp_ids, offsets):
        """Byte spans of the feature's response tokens (the response, maybe cut, maybe + the EOS added)."""
        r = feature["input_ids"][feature["prompt_len"]:]
        n_text = min(len(r), len(resp_ids))
        off = [tuple(o) for o in offsets[:n_text]] + [(0, 0)] * (len(r) - n_text)
        special = [False] * n_text + [True] * (len(r) - n_text)
        pieces = [token_bytes(t, self.byte_level) for t in self.tok.convert_ids_to_tokens(r)]
        return token_byte_spans(response, off, special=special, pieces=pieces), r


def with_eos_group(al: Alignment, t_ids, s_ids, t_eos: int, s_eos: int) -> Alignment:
    """The two final EOS tokens as one more 1-1 group, where both sides end with an EOS in no group."""
    if not (t_ids and s_ids and t_ids[-1] == t_eos and s_ids[-1] == s_eos
            and al.t_group[-1] < 0 and al.s_group[-1] < 0):
        return al
    g, nt, ns = len(al.teacher), len(al.t_group), len(al.s_group)
    t_group, s_group = al.t_group.clone(), al.s_group.clone()
    t_group[-1], s_group[-1] = g, g
    return Alignment(torch.cat([al.teacher, torch.tensor([[nt - 1, nt - 1]])]),
                     torch.cat([al.student, torch.tensor([[ns - 1, ns - 1]])]),
                     t_group, s_group, al.t_unaligned - 1, al.s_unaligned - 1)


def _add_alignment_stats(stats: dict, al: Alignment, n_t: int, n_s: int) -> None:
    stats["teacher_response_tokens"] += n_t
    stats["teacher_unaligned"] += al.t_unaligned
    stats["student_unaligned"] += al.s_unaligned
    stats["aligned_groups"] += len(al.teacher)
    stats["one_to_one_groups"] += int(((al.teacher[:, 0] == al.teacher[:, 1])
                                       & (al.student[:, 0] == al.student[:, 1])).sum())


def encode_pairs(examples, tokenizer, teacher_tokenizer, template: str, t_template: str, max_length: int, *,
                 source: str = "") -> tuple[list[dict], dict]:
    """Features of both sides and their alignment, as okd.data.encode_examples for the student (same
    features, same stats) plus the teacher's side; an example either side cannot encode is dropped.
    stats adds teacher_dropped, teacher_response_tokens, teacher_unaligned, student_unaligned (tokens in
    no group; the student's are scored but not distilled), aligned_groups, one_to_one_groups."""
    examples = list(examples)
    if not examples:
        raise OkdError("no examples to tokenize")
    for tok, role in ((tokenizer, "student"), (teacher_tokenizer, "teacher")):
        check_fast(tok, role)
    s, t = _Side(tokenizer, template, max_length), _Side(teacher_tokenizer, t_template, max_length)
    stats, t_stats = _new_stats(len(examples)), _new_stats(len(examples))
    stats.update(dict.fromkeys(("teacher_dropped", "teacher_response_tokens", "teacher_unaligned",
                                "student_unaligned", "aligned_groups", "one_to_one_groups"), 0))
    features: list[dict] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start:start + _CHUNK]
        sides = (zip(*side.enc.texts(chunk, offsets=True)) for side in (s, t))
        for ex, (sp, sr, so), (tp, tr, to) in zip(chunk, *sides):
            ft = t.enc.assemble(tp, tr, t_stats)
            if ft is None:
                stats["teacher_dropped"] += 1
                continue
            fs = s.enc.assemble(sp, sr, stats)
            if fs is None:
                continue
            (t_spans, t_ids), (s_spans, s_ids) = t.spans(ex.response, ft, tr, to), s.spans(ex.response, fs, sr, so)
            al = with_eos_group(align_spans(t_spans, s_spans), t_ids, s_ids, t.enc.eos, s.enc.eos)
            _add_alignment_stats(stats, al, len(t_ids), len(s_ids))
            fs.update(teacher_input_ids=ft["input_ids"], teacher_labels=ft["labels"], teacher_prompt_len=ft["prompt_len"],
                      alignment=al)
            features.append(fs)
    of = f" of {source}" if source else ""
    _check_prompts_kept(stats, max_length, s.enc.header, of)
    if not features:
        raise OkdError(f"none of the {len(examples)} examples{of} could be tokenized by both the student's and the "
                       f"teacher's tokenizer within data.max_length={max_length}; raise data.max_length or check "
                       "the data")
    return features, stats


class CrossCollator:
    """The student's batch (Collator) plus the teacher's: teacher_input_ids, teacher_attention_mask,
    teacher_labels, teacher_scored_index, and the Groups as `xtok_*` tensors (rows: module docstring).
    Features without an alignment (validation, which scores the student only) get the student's batch."""

    def __init__(self, student: Collator, teacher_pad_token_id: int):
        self.student = student
        self.teacher = Collator(teacher_pad_token_id, pad_to_multiple_of=student.pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.student(features)
        if not all("alignment" in f for f in features):
            return batch
        tb = self.teacher([{"input_ids": f["teacher_input_ids"], "labels": f["teacher_labels"]} for f in features])
        batch.update(teacher_input_ids=tb["input_ids"], teacher_attention_mask=tb["attention_mask"],
                     teacher_labels=tb["labels"],
                     teacher_scored_index=(tb["labels"][:, 1:].reshape(-1) != -100).nonzero().squeeze(1))
        batch.update(group_tensors(features))
        return batch


def _starts(lengths: list[int]) -> list[int]:
    """Each example's first row: the sum of the lengths before it."""
    return list(itertools.accumulate(lengths, initial=0))[:-1]


def group_tensors(features: list[dict]) -> dict[str, torch.Tensor]:
    """The batch's Groups (okd.crosstok.batch_groups) as tensors keyed xtok_<field>."""
    t_rows = _starts([len(f["teacher_input_ids"]) - int(f["teacher_prompt_len"]) for f in features])
    s_rows = _starts([len(f["input_ids"]) - int(f["prompt_len"]) for f in features])
    groups = batch_groups([f["alignment"] for f in features], t_rows, s_rows)
    return {k: torch.as_tensor(v) for k, v in zip(GROUP_KEYS, groups)}


def groups_of(batch: dict) -> Groups:
    """The Groups a CrossCollator batch carries (on the batch's device; the two unaligned counts stay
    0-dim tensors, so that nothing waits for the device: the losses do not read them)."""
    return Groups(*(batch[k] for k in GROUP_KEYS))


def teacher_side(features: list[dict]) -> list[dict]:
    """The teacher's encoding of paired features as features of its own (what a cross-tokenizer teacher
    cache is built on and checked against)."""
    return [{"input_ids": f["teacher_input_ids"], "labels": f["teacher_labels"]} for f in features]
