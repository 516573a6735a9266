"""Tokenization with response-only labels.

Prompt and response are tokenized separately: labels are -100 on every prompt token and equal to the
token id on response tokens and the appended EOS. Labels are NOT shifted (the loss code shifts).
Sequences longer than max_length lose prompt tokens from the left first (the end of the prompt,
next to the response, matters most); a response that alone leaves no room is cut from the right.
"""

from __future__ import annotations

import logging

from okd.errors import OkdError
from okd.data.readers import Example
from okd.data.templates import check_template, format_prompt

log = logging.getLogger("okd.data")

IGNORE_INDEX = -100
MIN_PROMPT_TOKENS = 8  # prompt tokens kept when a long response has to be cut
_CHUNK = 512           # examples per batched tokenizer call
_PROGRESS_MIN = 2000   # show a progress bar only for at least this many examples


def _bos_to_add(tokenizer) -> int | None:
    """The BOS id if the tokenizer puts one in front of plain text by default, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if len(with_special) > len(without) and with_special[0] == bos else None


def left_cut(ids: list[int], room: int, bos_id: int | None) -> list[int]:
    """The last `room` tokens of a prompt, keeping a leading BOS in place (training features, rollout
    prompts and prompts fitted to a model's context all cut this way)."""
    if len(ids) <= room:
        return ids
    if room <= 0:
        return []
    if bos_id is not None and ids[0] == bos_id and room >= 2:
        return [ids[0]] + ids[len(ids) - room + 1:]
    return ids[len(ids) - room:]


class _Encoder:
    """Holds what every example of one encoding pass shares (tokenizer, template, special ids)."""

    def __init__(self, tokenizer, template: str, max_length: int):
        check_template(template, tokenizer)
        if max_length < 2:
            raise OkdError(f"data.max_length must be at least 2 tokens, got {max_length}")
        self.tok, self.template, self.max_length = tokenizer, template, max_length
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise OkdError("the tokenizer has no EOS token; set tokenizer.eos_token (responses end with it)")
        # Tokenizing with add_special_tokens=False keeps special tokens written in the text (a chat
        # template's own BOS); a BOS is added only where the tokenizer would add one and it is missing.
        self.bos = _bos_to_add(tokenizer)
        self.header = self._header_tokens()

    def _header_tokens(self) -> int:
        """Tokens the template puts after the instruction (alpaca: "\n\n### Response:\n"): a prompt cut to
        no more than these (and a BOS) has lost every token of its instruction."""
        marker = "okd-instruction-end"
        try:
            text = format_prompt(Example(instruction=marker, response="x"), self.template, self.tok)
        except OkdError:
            return 0
        tail = text[text.rfind(marker) + len(marker):]
        return len(self.tok(tail, add_special_tokens=False)["input_ids"]) if tail else 0

    def texts(self, examples, offsets: bool = False):
        """(prompt ids with BOS, response ids) per example; with `offsets`, also the response tokens' character
        offsets (cross-tokenizer alignment), from the same tokenizer call."""
        prompts = [format_prompt(ex, self.template, self.tok) for ex in examples]
        p_ids = self.tok(prompts, add_special_tokens=False)["input_ids"]
        r = self.tok([ex.response for ex in examples], add_special_tokens=False, return_offsets_mapping=offsets)
        out = [self.with_bos(p) for p in p_ids], r["input_ids"]
        return (*out, r["offset_mapping"]) if offsets else out

    def with_bos(self, ids: list[int]) -> list[int]:
        ids = list(ids)
        if self.bos is not None and (not ids or ids[0] != self.bos):
            ids.insert(0, self.bos)
        return ids

    def left_cut(self, ids: list[int], room: int) -> list[int]:
        return left_cut(ids, room, self.bos)

    def assemble(self, p: list[int], resp: list[int], stats: dict) -> dict | None:
        """One feature from prompt ids and response ids (no EOS yet), updating `stats` counts."""
        r = list(resp) if resp and resp[-1] == self.eos else list(resp) + [self.eos]
        if not p:  # nothing to condition on (empty prompt and no BOS): cannot score the first token
            stats["dropped"] += 1
            return None
        if len(p) + len(r) > self.max_length:
            # keep at least a few prompt tokens (or the whole prompt if it is shorter than that)
            budget = self.max_length - min(len(p), MIN_PROMPT_TOKENS, self.max_length // 2)
            if len(r) > budget:
                r = r[:budget]  # cut from the right: the EOS is gone, the answer is unfinished
                stats["truncated_response"] += 1
            room = self.max_length - len(r)
            if len(p) > room:
                p = self.left_cut(p, room)
                stats["truncated_prompt"] += 1
                if len(p) <= self.header + (self.bos is not None):
                    stats["prompt_lost"] += 1
        if not p or not r:
            stats["dropped"] += 1
            return None
        stats["tokens"] += len(p) + len(r)
        stats["response_tokens"] += len(r)
        stats["max_len"] = max(stats["max_len"], len(p) + len(r))
        return {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r, "prompt_len": len(p)}


def _new_stats(n: int) -> dict:
    return {"n": n, "truncated_prompt": 0, "truncated_response": 0, "dropped": 0, "prompt_lost": 0,
            "tokens": 0, "response_tokens": 0, "max_len": 0}


def _check_prompts_kept(stats: dict, max_length: int, header: int, of: str = "") -> None:
    """Prompts cut to the template's last tokens keep none of their instruction: trained on, they teach
    answers to "### Response:" alone. An error when that is most examples, else a warning with the count.
    (When every response is cut short too, the caller's message about that comes first.)"""
    lost, n = stats["prompt_lost"], stats["n"]
    if not lost or stats["truncated_response"] >= n:
        return
    what = (f"data.max_length={max_length} leaves no room for the instruction in {lost} of {n} examples{of}: their "
            f"prompts were cut from the left to at most the template's last {header} tokens")
    if 2 * lost > n:
        raise OkdError(f"{what}, so the model would learn answers without their questions; raise data.max_length")
    log.warning("%s (those examples are answers without their questions); raise data.max_length to keep them", what)


def encode_example(example, tokenizer, template: str, max_length: int) -> dict | None:
    """{"input_ids", "labels", "prompt_len"} for one example, or None if it cannot be encoded."""
    enc = _Encoder(tokenizer, template, max_length)
    (p,), (r,) = enc.texts([example])
    return enc.assemble(p, r, _new_stats(1))


def encode_examples(examples, tokenizer, template: str, max_length: int, *,
                    progress: bool = False, source: str = "") -> tuple[list[dict], dict]:
    """Encode many examples (batched tokenizer calls); returns (features, stats).

    stats: n (examples given), truncated_prompt, truncated_response, dropped, prompt_lost (prompts cut
    to no more than the template's tokens after the instruction), tokens (in the features),
    response_tokens (labelled tokens), max_len (longest feature). When most prompts lose their whole
    instruction that is an OkdError (a warning for fewer), naming `source` (e.g. "data.valid 'x.jsonl'").
    """
    examples = list(examples)
    if not examples:
        raise OkdError("no examples to tokenize")
    enc = _Encoder(tokenizer, template, max_length)
    stats = _new_stats(len(examples))
    features: list[dict] = []
    bar = None
    if progress and len(examples) >= _PROGRESS_MIN:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="tokenizing", unit="ex")
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start:start + _CHUNK]
        for p, r in zip(*enc.texts(chunk)):
            feature = enc.assemble(p, r, stats)
            if feature is not None:
                features.append(feature)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    of = f" of {source}" if source else ""
    _check_prompts_kept(stats, max_length, enc.header, of)
    if not features:
        raise OkdError(f"none of the {len(examples)} examples{of} could be tokenized within data.max_length="
                       f"{max_length}; raise data.max_length or check the data")
    return features, stats


def prompt_ids(example, tokenizer, template: str, max_prompt_length: int) -> list[int]:
    """The prompt's token ids only (for generation), left-cut to max_prompt_length."""
    if max_prompt_length < 1:
        raise OkdError(f"the maximum prompt length must be at least 1 token, got {max_prompt_length}")
    enc = _Encoder(tokenizer, template, max(max_prompt_length, 2))
    ids = enc.with_bos(tokenizer(format_prompt(example, template, tokenizer),
                                 add_special_tokens=False)["input_ids"])
    return enc.left_cut(ids, max_prompt_length)
