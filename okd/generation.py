"""Batched sampling/greedy generation, shared by on-policy training methods and evaluation.

One function, `generate`, wraps Hugging Face `model.generate` with the conventions okd relies on:
left padding, KV cache, prompts sorted by length so batches carry little padding (order restored on
return), an explicit sampling configuration that ignores whatever the checkpoint's
`generation_config.json` suggests (evaluation must be temperature 1, top-p 1, top-k off unless asked),
and seeding that leaves the caller's global RNG state untouched.

On CUDA (issue 14: the host-bound GPU) generation uses a static KV cache
(`cache_implementation="static"`): the cache is allocated once per call at prompt width +
`max_new_tokens`, so every decode step has the same shapes and transformers compiles the decode
forward (`torch.compile`, its default `CompileConfig`: mode "reduce-overhead", i.e. CUDA graphs).
Prompts are left-padded to a multiple of `STATIC_PAD_MULTIPLE` (64) tokens there, so calls see few
distinct shapes and few recompilations (CUDA graphs are recorded per shape). On CPU nothing
changes: dynamic cache, exact padding, no compile (the same tokens as before, bit for bit).
`static_cache`, `compile` and `pad_multiple` override the automatic choice (tests run the static
path on CPU); a model sharded by DeepSpeed ZeRO-3 or FSDP keeps the dynamic cache (and exact padding).

transformers 5 semantics: a `top_k` of None in a GenerationConfig is filled from the checkpoint's
generation_config or the library default (50), while `top_k=0` disables the top-k filter; so we
always pass the value explicitly and 0 means off.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch


@dataclass
class GenerationResult:
    sequences: list[list[int]]  # response tokens only, cut before the first EOS
    finished: list[bool]  # True where the model emitted EOS within max_new_tokens
    texts: list[str]  # decoded sequences, special tokens skipped
    num_tokens: int  # generated tokens, counting each finishing EOS once
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often add one)."""
    ids: list[int] = []
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def pad_id(tokenizer, eos: list[int]) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        if not eos:
            raise ValueError("tokenizer has neither a pad nor an EOS token")
        pid = eos[0]
    return int(pid)


STATIC_PAD_MULTIPLE = 64  # prompt width bucket on CUDA


def padded_width(width: int, multiple: int = 1) -> int:
    """`width` rounded up to a multiple of `multiple`."""
    return -(-width // max(1, multiple)) * max(1, multiple)


def left_pad(prompts: list[list[int]], pad_token_id: int, device=None, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-padded ids and mask, `multiple` rounding the width up (a shape bucket)."""
    width = padded_width(max(len(p) for p in prompts), multiple)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def sharded(model) -> bool:
    """True for a model partitioned by DeepSpeed ZeRO-3 or wrapped by FSDP (no static cache there)."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return True
    return any("FSDP" in type(m).__name__ or type(m).__name__ == "FullyShardedDataParallel"
               for m in model.modules())


def fsdp_root(model):
    """`model` itself when it is an FSDP (version 1) wrapper (accelerate's prepared model), else None."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch without distributed support
        return None
    return model if isinstance(model, FullyShardedDataParallel) else None


def collective(lm) -> bool:
    """True where every forward of `lm` is a collective over several processes (its weights sharded by
    ZeRO-3 or FSDP): then every process must take part in every forward of a generation."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and sharded(lm)


@contextlib.contextmanager
def ready_to_generate(model):
    """The bare causal LM of `model` (past DDP/FSDP/DeepSpeed/peft wrappers), ready to `generate` on
    every process, sharded or not.

    FSDP: the root unit's own weights (embeddings, final norm: what no nested unit holds) are gathered
    for the block (summon_full_params(recurse=False), as TRL's GRPO does), since the bare model's forward
    bypasses the root's; the nested units (decoder layers) gather theirs in their own forwards. ZeRO-3:
    each module gathers its weights in its own hooks. Either way every forward is a collective, so
    `generate` runs with synced_gpus=True: a process whose samples all ended keeps joining the forwards,
    without sampling, until every process is done (one all-reduce of the 'done' flag per token). Every
    process must generate the same number of times (okd's callers: one batch each). Elsewhere a no-op.
    """
    from okd.models.loading import causal_lm

    root = fsdp_root(model)
    lm = causal_lm(model if root is None else root.module)  # (FSDP passes attribute reads through to its module)
    with contextlib.ExitStack() as stack:
        if root is not None:
            stack.enter_context(type(root).summon_full_params(root, recurse=False, writeback=False))
        if collective(lm):
            bound = type(lm).generate.__get__(lm)
            lm.generate = lambda *args, **kwargs: bound(*args, **{**kwargs, "synced_gpus": True})
            stack.callback(delattr, lm, "generate")
        yield lm


def static_cache_for(model, static_cache: bool | None = None) -> bool:
    """The static KV cache is used where asked, or by default on CUDA for an unsharded model."""
    if static_cache is not None:
        return bool(static_cache)
    return model_device(model).type == "cuda" and not sharded(model)


def default_pad_multiple(device: torch.device, static: bool = True) -> int:
    """64 for the static cache on CUDA (a few shapes to compile), else 1 (exact: no padding to pay for)."""
    return STATIC_PAD_MULTIPLE if device.type == "cuda" and static else 1


class _VocabLimit:
    """Logits processor that forbids ids >= limit (a teacher with a padded head must not sample
    tokens the student cannot embed)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, input_ids, scores):
        if scores.shape[-1] > self.limit:
            scores = scores.clone()
            scores[:, self.limit:] = float("-inf")
        return scores


def compile_config():
    """torch.compile settings of the decode step: transformers' default CompileConfig (mode
    "reduce-overhead", i.e. CUDA graphs; dynamic shapes left to torch). One place, so a test can swap
    in a quick backend."""
    from transformers import CompileConfig

    return CompileConfig()


def generation_config(*, max_new_tokens: int, pad: int, eos: list[int], greedy: bool, temperature: float,
                      top_p: float, top_k: int, use_cache: bool, static: bool, compile: bool | None,
                      no_repeat_ngram_size: int = 0):
    """A GenerationConfig with an explicit value for every sampling knob, so a checkpoint's
    generation_config cannot add top-k 50, repetition penalties etc. behind our back (None fields
    would be filled from it). `static`: a static KV cache; `compile`: None lets transformers decide
    (it compiles the decode step on CUDA with a static cache), False never, True on any device."""
    from transformers import GenerationConfig

    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, num_beams=1,
                  pad_token_id=pad, eos_token_id=eos or None, use_cache=use_cache,
                  repetition_penalty=1.0, no_repeat_ngram_size=int(no_repeat_ngram_size), bos_token_id=None)
    if greedy:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p),
                      top_k=int(top_k), typical_p=1.0, min_p=0.0)
    if static and use_cache:
        kwargs.update(cache_implementation="static")
        if compile is False:
            kwargs.update(disable_compile=True)
        elif compile:
            config = compile_config()
            config._compile_all_devices = True  # transformers' own switch for compiling off CUDA
            kwargs.update(compile_config=config)
    return GenerationConfig(**kwargs)


def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
             seed: int | None = None, batch_size: int = 16, progress: bool = False,
             vocab_limit: int | None = None, use_cache: bool = True, static_cache: bool | None = None,
             compile: bool | None = None, pad_multiple: int | None = None,
             no_repeat_ngram_size: int = 0, compact: bool = False) -> GenerationResult:
    """Generate a response for each prompt (token id lists); returns them in the prompts' order.

    Sampling uses exactly `temperature`, `top_p` and `top_k` (0 = off); `greedy=True` ignores them.
    With a `seed`, sampling runs under `torch.random.fork_rng` so the same seed (and batch size)
    gives the same samples and the caller's RNG stream is unaffected. Each call with a seed draws
    from one RNG stream across its batches, so results depend on the batch size too.
    `vocab_limit` forbids sampling ids >= it. The model is put in eval mode for the call and restored.
    `static_cache` (None: on CUDA), `compile` (None: transformers' choice, i.e. on CUDA with the
    static cache) and `pad_multiple` (None: 64 with the static cache on CUDA, else 1): module doc.
    `no_repeat_ngram_size` n > 0 forbids repeating any n-gram (transformers'; for reading, not for scores).
    `compact=True` decodes with okd's own loop, which drops the rows that ended from the batch (`_decode`).
    """
    return generate_seeds(model, tokenizer, prompts, seeds=[seed], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
                          batch_size=batch_size, progress=progress, vocab_limit=vocab_limit,
                          use_cache=use_cache, static_cache=static_cache, compile=compile,
                          pad_multiple=pad_multiple, no_repeat_ngram_size=no_repeat_ngram_size,
                          compact=compact)[0]


def generate_seeds(model, tokenizer, prompts: list[list[int]], *, seeds: list[int | None], max_new_tokens: int,
                   temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                   batch_size: int = 16, progress: bool = False, vocab_limit: int | None = None,
                   use_cache: bool = True, static_cache: bool | None = None, compile: bool | None = None,
                   pad_multiple: int | None = None, no_repeat_ngram_size: int = 0,
                   compact: bool = False) -> list[GenerationResult]:
    """`generate` once per seed (the same results, seed by seed, as separate calls), with each
    batch's prompts read once for all seeds: the prompt minus its last token goes through the model
    a single time and every seed continues from a copy of that KV cache (evaluation's 5 samples per
    prompt: prefill is about half the cost of a 32-token answer on CPU). Each seed keeps its own RNG
    stream across the batches, as a separate call would. With one seed, the static cache (CUDA) or
    use_cache=False, the prompts are read per seed as in `generate`.

    `compact=True` (evaluation's sampling): okd's decode loop (`_decode`) instead of `model.generate`; a row
    that emitted EOS leaves the batch and its KV cache, so a batch costs the tokens its answers have, not
    batch x the longest answer (at 256 new tokens most answers end long before the longest). The
    same distribution per token (the processors are transformers' own); other random draws than
    `model.generate`'s, since fewer rows draw. Only for a dynamic cache on an unsharded model.
    """
    from transformers import LogitsProcessorList

    if not seeds:
        raise ValueError("seeds: give at least one (None: unseeded)")
    if not prompts:
        return [GenerationResult([], [], [], 0) for _ in seeds]
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if not greedy and not temperature > 0:
        raise ValueError(f"sampling temperature must be > 0 (use greedy=True instead), got {temperature}")
    if len(seeds) > 1 and any(s is None for s in seeds):
        raise ValueError("seeds: several unseeded streams cannot be told apart; give integers")
    if not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module  # DDP-style wrapper: generate on the wrapped model
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    device = model_device(model)
    static = static_cache_for(model, static_cache) and use_cache
    config = generation_config(max_new_tokens=max_new_tokens, pad=pad, eos=eos, greedy=greedy,
                               temperature=temperature, top_p=top_p, top_k=top_k, use_cache=use_cache,
                               static=static, compile=compile, no_repeat_ngram_size=no_repeat_ngram_size)
    processors = LogitsProcessorList([_VocabLimit(vocab_limit)] if vocab_limit else [])
    multiple = default_pad_multiple(device, static) if pad_multiple is None else pad_multiple
    share = len(seeds) > 1 and use_cache and not static
    if compact and (static or not use_cache or sharded(model)):
        raise ValueError("compact decoding needs the dynamic KV cache of an unsharded model")
    decode = _Decoder(model, config, processors, eos) if compact else None

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=fork_devices, enabled=seeds[0] is not None):
            streams = [_SeedStream(s, device) for s in seeds]
            outs = _batches(model, prompts, config, processors, pad, set(eos), batch_size, multiple,
                            progress, streams, share, decode)
    finally:
        model.train(was_training)
    elapsed = (time.perf_counter() - start) / len(seeds)  # the shared prefill split evenly
    return [GenerationResult(seqs, fin, tokenizer.batch_decode(seqs, skip_special_tokens=True), n, elapsed)
            for seqs, fin, n in outs]


class _SeedStream:
    """One seed's RNG state, carried across batches (torch's global generator is what sampling draws
    from, so each seed's state is swapped in for its own generate calls)."""

    def __init__(self, seed: int | None, device: torch.device):
        self.cuda = (device.index or 0) if device.type == "cuda" else None
        self.state = None
        if seed is not None:
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self):
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None)

    def __enter__(self):
        if self.state is not None:
            torch.set_rng_state(self.state[0])
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.state[1], self.cuda)

    def __exit__(self, *exc):
        if self.state is not None:
            self.state = self._get()


class _Prefix:
    """Reads a batch's prompts but their last token once (left padding: the last column), for every
    seed to continue from; the model's forward signature is read once per call."""

    def __init__(self, model):
        import inspect

        params = inspect.signature(model.forward).parameters
        self.model = model
        self.key = "cache" if "cache" in params else "past_key_values"  # transformers 5.2x renamed it
        self.keep_one = "logits_to_keep" in params

    def cache(self, enc: dict):
        """The prefix's KV cache, or None where a prompt has a single token (nothing to share)."""
        mask = enc["attention_mask"][:, :-1]
        if mask.shape[1] == 0 or bool((mask.sum(-1) == 0).any()):
            return None
        kwargs = dict(input_ids=enc["input_ids"][:, :-1], attention_mask=mask, use_cache=True,
                      position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))  # as generate computes them
        if self.keep_one:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        return getattr(out, self.key)


def _batches(model, prompts, config, processors, pad: int, eos_set: set, batch_size: int, multiple: int,
             progress: bool, streams: list[_SeedStream], share: bool, decode=None):
    """The batched `model.generate` calls per seed: (responses cut at the first EOS, finished flags,
    generated tokens counting each finishing EOS once) per seed, in the prompts' order."""
    import copy

    # Longest first: equal-length neighbours need little padding, and an OOM shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outs = [([None] * len(prompts), [False] * len(prompts)) for _ in streams]
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="generate", unit="batch")
    reader = _Prefix(model) if share else None
    for b in batches:
        idx = order[b:b + batch_size]
        enc = left_pad([prompts[i] for i in idx], pad, model_device(model), multiple)
        prefix = reader.cache(enc) if reader is not None else None
        for k, (stream, (sequences, finished)) in enumerate(zip(streams, outs)):
            extra = {}
            if prefix is not None:  # generate extends the cache in place: a copy for all but the last seed
                extra[reader.key] = copy.deepcopy(prefix) if k < len(streams) - 1 else prefix
            with stream:
                if decode is not None:
                    out = decode(enc, extra.get(reader.key) if reader is not None else None)
                else:
                    out = model.generate(**enc, generation_config=config, logits_processor=processors, **extra)
            for i, toks in zip(idx, out[:, enc["input_ids"].shape[1]:].tolist()):
                cut = next((j for j, t in enumerate(toks) if t in eos_set), None)
                finished[i] = cut is not None
                sequences[i] = toks if cut is None else toks[:cut]
    return [(seqs, fin, sum(len(t) for t in seqs) + sum(fin)) for seqs, fin in outs]


class _Decoder:
    """okd's decode loop for `compact=True`: sampling (or greedy) with the KV cache, dropping the rows
    that emitted EOS from the batch, the cache and the mask as they end. Written by hand because
    transformers' generate keeps every row until the last one ends (its finished rows decode padding).
    The scores go through transformers' own processors in generate's order (the caller's, no-repeat
    n-grams, then temperature, top-k, top-p), in float32. Returns what `model.generate` returns: prompt
    + generated ids, right-padded with the pad id after an EOS."""

    def __init__(self, model, config, processors, eos: list[int]):
        from transformers import (LogitsProcessorList, NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        forward = _Prefix(model)  # the forward's cache keyword and logits_to_keep, read once
        self.model, self.config, self.key, self.keep_one = model, config, forward.key, forward.keep_one
        steps = LogitsProcessorList(processors)
        if config.no_repeat_ngram_size:
            steps.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.do_sample:
            if config.temperature != 1.0:
                steps.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                steps.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                steps.append(TopPLogitsWarper(config.top_p))
        self.steps = steps
        self.eos = torch.tensor(eos or [-1])

    def __call__(self, enc: dict, prefix=None) -> torch.Tensor:
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        n, width, new = ids.shape[0], ids.shape[1], self.config.max_new_tokens
        out = torch.full((n, width + new), self.config.pad_token_id, dtype=torch.long, device=ids.device)
        out[:, :width] = ids
        rows = torch.arange(n, device=ids.device)  # the batch rows still decoding
        seqs = ids  # their prompt + generated ids (the n-gram processor reads them)
        cache = prefix if prefix is not None else DynamicCache()
        step_ids = ids[:, -1:] if prefix is not None else ids
        eos = self.eos.to(ids.device)
        for t in range(new):
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -step_ids.shape[1]:]
            kwargs = {"input_ids": step_ids, "attention_mask": mask, "position_ids": pos, "use_cache": True,
                      self.key: cache}
            if self.keep_one:
                kwargs["logits_to_keep"] = 1
            result = self.model(**kwargs)
            cache = getattr(result, self.key)
            scores = self.steps(seqs, result.logits[:, -1, :].float())
            if self.config.do_sample:
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                token = scores.argmax(-1)
            out[rows, width + t] = token
            going = ~torch.isin(token, eos)
            if t == new - 1 or not bool(going.any()):
                break
            seqs = torch.cat([seqs, token[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            step_ids = token[:, None]
            if not bool(going.all()):  # drop the rows that ended: every later step costs the rows left
                keep = going.nonzero().squeeze(1)
                rows, seqs, mask, step_ids = rows[keep], seqs[keep], mask[keep], step_ids[keep]
                cache.batch_select_indices(keep)
        return out
