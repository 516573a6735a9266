"""Sequence-level KD (Kim & Rush 2016): train on the teacher's responses instead of the references.

The teacher answers each training prompt once; the answers live in a JSONL cache
(`method.seqkd_cache`, default `<output_dir>/seqkd_cache.jsonl`), one line per prompt:
{"key", "tokens", "finished", "text"}. The key is a SHA-256 of the prompt's token ids, the teacher
(path, GGUF file, revision) and the generation settings, so a cache is reused only for the same
teacher and settings, and one file can serve many runs (point `method.seqkd_cache` at it).

Filling is lazy: `prepare` looks every prompt of the batch up and lets the teacher generate (one
batched call) only for the missing ones, appending them to the file. The first epoch fills the
cache; every later epoch, resumed run or rerun on the same data generates nothing. Lazy filling
needs no pass over the data before step 1 and costs nothing for prompts a short run never reaches.

Decoding: greedy by default (`method.seqkd_greedy`, the beam-1 version of Kim & Rush's beam
search, deterministic, so a cache is a function of its key); with `seqkd_greedy: false` it samples
at `method.gen_temperature` / `method.top_p`, once per prompt (the cached sample is then reused).
At most `method.max_new_tokens` tokens; the EOS is a label only where the teacher emitted it.

Loss: CE on the teacher's tokens (`method.divergence` unset or ce). Any other divergence trains the
student toward the frozen teacher's full distribution on the teacher's own text (word-level KD on
SeqKD data, Kim & Rush's "Word + Seq" combination). An online teacher is refused: its module would
have nothing to learn from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from okd.errors import OkdError
from okd.methods.base import Method, ce_sum
from okd.methods.kd import FrozenTeacherKD
from okd.methods.rollout import batch_prompts, build_batch, sample, targets_of

log = logging.getLogger(__name__)


def teacher_identity(cfg) -> dict:
    t = cfg.teacher
    path = os.path.expanduser(t.path or "")
    if os.path.exists(path):
        path = os.path.abspath(path)  # the same directory, however the config spells it
    return {"teacher": path, "gguf_file": t.gguf_file, "revision": t.revision}


@dataclass(eq=False)
class SeqKD(Method):
    name = "seqkd"

    def __post_init__(self):
        m = self.cfg.method
        self.path = Path(m.seqkd_cache or Path(self.cfg.output_dir) / "seqkd_cache.jsonl")
        self.settings = {**teacher_identity(self.cfg), "max_new_tokens": m.max_new_tokens,
                         "greedy": m.seqkd_greedy or m.gen_temperature == 0}
        if not self.settings["greedy"]:
            self.settings.update(temperature=m.gen_temperature, top_p=m.top_p)
        self.cache = self._read()
        self.kd = None if m.resolved_divergence == "ce" else FrozenTeacherKD(cfg=self.cfg, models=self.models)

    def _read(self) -> dict[str, list[int]]:
        cache: dict[str, list[int]] = {}
        if not self.path.is_file():
            return cache
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = [int(t) for t in row["tokens"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line cut by a crash, or someone else's format: regenerate that prompt
        if cache:
            log.info("seqkd: %d cached teacher responses in %s", len(cache), self.path)
        return cache

    def key(self, prompt: list[int]) -> str:
        blob = json.dumps({"prompt": prompt, **self.settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def fill(self, prompts: list[list[int]], keys: list[str]) -> None:
        """Generate the teacher's responses for the prompts not cached yet and append them.

        On several processes a prompt wanted by several is answered by the first, the answers are
        gathered, every process caches all of them and the main process alone writes them (the others wait). Under FSDP or ZeRO-3 (every forward of the teacher a
        collective) every process generates whenever any has prompts to answer; one with none answers
        one of its cached prompts again and drops it."""
        import torch.distributed as dist

        from okd.generation import collective
        from okd.models.loading import causal_lm

        todo = {}
        for k, p in zip(keys, prompts):
            if k not in self.cache:
                todo.setdefault(k, p)
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            if todo:
                self._write(self._answer(todo))
            return
        wanted: list = [None] * dist.get_world_size()
        dist.all_gather_object(wanted, list(todo))
        if not any(wanted):
            return
        earlier = {k for keys in wanted[:dist.get_rank()] for k in keys}
        todo = {k: p for k, p in todo.items() if k not in earlier}  # a prompt on two processes: answered once
        synced = collective(causal_lm(self.models.teacher))
        rows = self._answer(todo or {None: prompts[0]}) if todo or synced else []
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, [r for r in rows if r[0] is not None])
        merged = {r[0]: r for part in everyone for r in part}
        for k, t, _, _ in merged.values():
            self.cache[k] = t
        if dist.get_rank() == 0:
            self._write(list(merged.values()))
        dist.barrier()

    def _answer(self, todo: dict) -> list[tuple]:
        """(key, label tokens, finished, text) per prompt of `todo`, from one batched teacher call."""
        tok = self.models.tokenizer
        result = sample(self.models.teacher, tok, list(todo.values()), self.cfg,
                        vocab_limit=self.models.vocab_size, greedy=self.settings["greedy"])
        rows = list(zip(todo, targets_of(result, tok.eos_token_id), result.finished, result.texts))
        self.metrics["generated_tokens"] = (self.metrics.get("generated_tokens", 0)  # (a stand-in prompt's not)
                                            + sum(len(t) for k, t, _, _ in rows if k is not None))
        for k, t, _, _ in rows:
            if k is not None:
                self.cache[k] = t
        return rows

    def _write(self, rows: list[tuple]) -> None:
        lines = [json.dumps({"key": k, "tokens": t, "finished": f, "text": text}) + "\n"
                 for k, t, f, text in rows if k is not None]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:  # one write per batch: whole lines
                f.write("".join(lines))
        except OSError as e:
            raise OkdError(f"method.seqkd_cache {str(self.path)!r} is not writable ({e.strerror}); "
                           "choose another path") from None

    def prepare(self, batch, step):
        tok = self.models.tokenizer
        prompts = batch_prompts(batch, self.cfg.data.max_prompt_length, tok.bos_token_id)
        keys = [self.key(p) for p in prompts]
        self.fill(prompts, keys)
        return build_batch(prompts, [self.cache[k] for k in keys], pad_id=tok.pad_token_id,
                           max_length=self.cfg.data.max_length, device=batch["input_ids"].device)

    def losses(self, batch, norm):
        if self.kd is not None:
            return self.kd.losses(batch, norm)
        loss, _ = ce_sum(self.models.student, batch, self.models.vocab_size, self.cfg.train.loss_chunk_size)
        return {"student": loss / norm}
