"""Frozen-teacher cache: the teacher's top-k next-token distribution at every scored token, on disk.

`build_cache` runs a frozen teacher once over tokenised splits (the trainer's features, in its order) and
writes, for every scored token (position t with labels[t+1] != -100: the hidden state at t predicts
labels[t+1], as okd.methods.base.Scored), the top-k token ids, their log-probabilities at τ = 1 and the
log of the probability mass outside the top k. `open_cache` checks a directory (manifest, every shard
present and whole), `validate_cache` checks it against a run config, `TeacherCache.lookup` returns the
rows of a batch.

Layout of DIR:
  manifest.json             written last (atomically): what the cache depends on, k, V, per-shard records
  build.json                only while building: the same fingerprint, so that a rerun resumes
  <split>-00000.safetensors one shard per `shard_examples` consecutive examples of a split, written to a
                            temporary file and renamed (a rerun skips complete shards):
      ids      [n, k]  uint16 when V <= 65,536, else int32: the top-k token ids, most probable first
      logp     [n, k]  float16 (or float32): log p at τ = 1 of those ids
      log_tail [n, m]  float32: log Σ_{j outside the top k} p_j^(1/τ) for each τ of manifest
                       `tail_temperatures` (τ = 1 first: the log of the remaining mass); −inf when k = V
      offsets  [e + 1] int64: example i of the shard owns rows offsets[i]:offsets[i+1]
    and, in a cache for a cross-tokenizer run (built on the teacher's own tokens, okd.crosstok.cached):
      label_logp      [n]     float32: log p at τ = 1 of the token the row predicts (the span term's chain rule)
      shared_ids      [n, k'] int32: the top-k' of the distribution restricted to the shared vocabulary and
                              renormalised there (k' = min(k, |M|)), as indices into the manifest's M
      shared_logp     [n, k'] float16 (or float32): their log p̃ at τ = 1
      shared_log_tail [n, m]  float32: log Σ_{M outside the top k'} p̃^(1/τ) per stored τ
  <split>.digests.bin       an 8-byte digest of every example's (input_ids, labels), in order
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from okd.errors import OkdError
from okd.models.fingerprints import (atomic_write, describe_changes, feature_digests, file_sha256,
                                     fingerprint_diffs, scored_count, source_sha256, teacher_identity,
                                     tokenizer_sha256)

log = logging.getLogger(__name__)

FORMAT, VERSION = "okd-teacher-cache", 1
DEFAULT_TOP_K = 64  # 260 bytes per token at fp16 (benchmarks/bench_cache.py chooses it)
SHARD_EXAMPLES = 1024
SHARD_ENTRIES = 1 << 26  # at most ~64M (token, id) entries per shard: ~256 MiB at fp16, bounded build memory
# what a message tells the user to do: for damage, rerun the build (it rewrites only what is missing or
# damaged); for a cache of other settings, build a new one for this config
REPAIR = "rerun `okd teacher cache -c CONFIG.yaml -o {dir}` to rewrite what is missing"
REBUILD = "build one for this config with `okd teacher cache -c CONFIG.yaml -o NEW_DIR`"
_NP = {"U16": np.uint16, "I32": np.int32, "I64": np.int64, "F16": np.float16, "F32": np.float32}


# ----------------------------------------------------------------------------- shard files

def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def read_shard(path: Path, expect_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of one shard; OkdError naming the shard if it is missing, cut short or broken."""
    where, repair = f"teacher cache shard {str(path)!r}", REPAIR.format(dir=path.parent)
    if not path.is_file():
        raise OkdError(f"{where} is missing; {repair}")
    size = path.stat().st_size
    if expect_bytes is not None and size != expect_bytes:
        raise OkdError(f"{where} {'is cut short' if size < expect_bytes else 'has the wrong size'} ({size} of "
                       f"{expect_bytes} bytes); {repair}")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = 8 + n + max(v["data_offsets"][1] for v in header.values())
        arrays = {k: np.zeros(v["shape"], dtype=_NP[v["dtype"]]) if v["data_offsets"][1] == v["data_offsets"][0]
                  else np.memmap(path, dtype=_NP[v["dtype"]], mode="r", offset=8 + n + v["data_offsets"][0],
                                 shape=tuple(v["shape"])) for k, v in header.items()} if end <= size else None
    except Exception:  # noqa: BLE001 - struct/json/key errors: not a shard
        raise OkdError(f"{where} is not a readable shard (cut short or overwritten); {repair}") from None
    if arrays is None:
        raise OkdError(f"{where} is cut short ({size} of {end} bytes); {repair}")
    return arrays


# ----------------------------------------------------------------------------- building

def _top_k(logp, k, temperatures):
    """(top-k ids, their log p, log Σ_{the rest} p^(1/τ) per τ) of log-probability rows (logp is overwritten)."""
    import torch

    lp, top = logp.topk(k, dim=-1)
    rest = logp.scatter_(1, top, float("-inf"))
    return top, lp, torch.stack([torch.logsumexp(rest if t == 1.0 else rest / t, -1) for t in temperatures], -1)


def _top_k_rows(h, weight, k, temperatures, dtypes, chunk=512, labels=None, shared=None):
    """Top-k ids, their log p (τ = 1) and log Σ_{tail} p^(1/τ) per τ for hidden rows h [N, H] (no grad),
    as numpy arrays in `dtypes`, converted chunk by chunk (so k = V stays within memory). With `shared`
    (the teacher ids of a cross-tokenizer pair's shared vocabulary M) and `labels` [N] (the token each row
    predicts) also label_logp and the top-k of the distribution renormalised over M (module doc)."""
    import torch

    m, km = len(temperatures), min(k, len(shared)) if shared is not None else 0
    spec = {"ids": (dtypes[0], (k,)), "logp": (dtypes[1], (k,)), "log_tail": (dtypes[2], (m,))}
    if shared is not None:
        spec.update(label_logp=(np.float32, ()), shared_ids=(np.int32, (km,)), shared_logp=(dtypes[1], (km,)),
                    shared_log_tail=(np.float32, (m,)))
    out: dict = {n: [] for n in spec}
    for i in range(0, h.shape[0], chunk):
        logp = torch.log_softmax(h[i:i + chunk].float() @ weight.t(), dim=-1)
        got = {}
        if shared is not None:
            got["label_logp"] = logp.gather(1, labels[i:i + chunk, None]).squeeze(1)
            on_m = torch.log_softmax(logp.index_select(1, shared), dim=-1)
            got.update(zip(("shared_ids", "shared_logp", "shared_log_tail"), _top_k(on_m, km, temperatures)))
        got.update(zip(("ids", "logp", "log_tail"), _top_k(logp, k, temperatures)))  # (overwrites logp)
        for n, x in got.items():  # to numpy chunk by chunk: k = V stays within memory
            out[n].append(x.cpu().numpy().astype(spec[n][0]))
    return {n: np.concatenate(out[n]) if out[n] else np.zeros((0, *shape), d) for n, (d, shape) in spec.items()}


def _score_examples(teacher, features, *, vocab_size, k, temperatures, pad_id, batch_size, device, dtypes,
                    shared=None):
    """Per example (in the given order): {name: numpy rows} (ids [n_i, k], logp [n_i, k], log_tail [n_i, m]
    in `dtypes`; and _top_k_rows' cross-tokenizer arrays with `shared`)."""
    import torch

    from okd.data.batching import Collator
    from okd.models.loading import final_hidden, output_weight

    weight = output_weight(teacher)[:vocab_size].detach().to(device=device, dtype=torch.float32)
    shared = None if shared is None else shared.to(device)  # once, not per batch
    collate = Collator(pad_id)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))  # little padding
    out: list = [None] * len(features)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = collate([{"input_ids": features[i]["input_ids"], "labels": features[i]["labels"]} for i in idx])
        mask = batch["labels"][:, 1:] != -100
        with torch.no_grad():
            hidden = final_hidden(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            rows = _top_k_rows(hidden[:, :-1][mask.to(device)], weight, k, temperatures, dtypes, shared=shared,
                               labels=None if shared is None else batch["labels"][:, 1:][mask].to(device))
        starts = np.cumsum([0] + mask.sum(1).tolist())
        for j, i in enumerate(idx):
            out[i] = {n: r[starts[j]:starts[j + 1]] for n, r in rows.items()}
    return out


def _shard_arrays(scored) -> dict[str, np.ndarray]:
    arrays = {n: np.concatenate([s[n] for s in scored]) for n in scored[0]}
    return {**arrays, "offsets": np.cumsum([0] + [len(s["ids"]) for s in scored]).astype(np.int64)}


def _shard_ok(path: Path, expected_counts: list[int], k: int) -> bool:
    """A shard left by an earlier run is reused if it holds exactly these examples' rows."""
    try:
        arrays = read_shard(path)
    except OkdError:
        return False
    want = np.cumsum([0] + expected_counts)
    return (arrays["offsets"].shape == want.shape and bool((arrays["offsets"] == want).all())
            and arrays["ids"].shape == (want[-1], k))


def _start_or_resume(out: Path, fingerprint: dict) -> dict | None:
    """The finished manifest if DIR already holds this cache; else prepares DIR (build.json) and returns None."""
    manifest, build = out / "manifest.json", out / "build.json"
    for f, what in ((manifest, "a teacher cache"), (build, "an unfinished teacher cache")):
        if f.is_file():
            old = json.loads(f.read_text())
            built = {k: old.get(k) for k in fingerprint}
            if fingerprint_diffs(built, fingerprint):
                raise OkdError(f"{out} already holds {what} built with another {describe_changes(built, fingerprint)}; "
                               "pass another -o DIR or delete that one")
            for stale in out.glob(".*.tmp-*"):  # what a kill in the middle of a write left behind
                stale.unlink()
            return old if f == manifest else None
    if out.exists() and any(out.iterdir()):
        raise OkdError(f"{out} is not empty and holds no teacher cache; pass a new or empty -o DIR")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(build, json.dumps(fingerprint, indent=1).encode())
    return None


def describe_config(cfg, tokenizer) -> dict:
    """What a cache built from `cfg` depends on (the manifest's `depends_on`, before feature digests)."""
    data = {"train": {"source": cfg.data.train, "sha256": source_sha256(cfg.data.train, "train"),
                      "limit": cfg.data.train_limit, "skip_invalid": cfg.data.skip_invalid}}
    if cfg.data.valid:
        data["valid"] = {"source": cfg.data.valid, "sha256": source_sha256(cfg.data.valid, "valid"),
                         "limit": cfg.data.valid_limit, "skip_invalid": cfg.data.skip_invalid}
    return {"teacher": teacher_identity(cfg.teacher), "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "template": cfg.data.template, "max_length": cfg.data.max_length, "data": data}


def build_cache(out, *, teacher, tokenizer, splits: dict[str, list[dict]], depends_on: dict, vocab_size: int,
                top_k: int = DEFAULT_TOP_K, temperatures=(1.0,), value_dtype: str = "float16",
                batch_size: int = 8, shard_examples: int = SHARD_EXAMPLES, device=None, progress: bool = True,
                shared=None) -> dict:
    """Score every split with `teacher` and write DIR (module doc); returns the manifest.

    splits: {"train": features, "valid": features} in the trainer's order. depends_on: `describe_config`
    (teacher identity, tokenizer hash, template, max_length, per-split data records); the feature
    digests and counts are added here. Resumes an interrupted build of the same fingerprint. shared: the
    teacher ids [|M|] of a cross-tokenizer pair's shared vocabulary (okd.crosstok.cached): the extra arrays.
    """
    import torch
    from tqdm.auto import tqdm

    out = Path(out)
    t0 = time.monotonic()
    check_top_k(top_k, vocab_size)
    temperatures = [1.0] + sorted({float(t) for t in temperatures} - {1.0})
    id_dtype = np.uint16 if vocab_size <= 65536 else np.int32
    depends_on = json.loads(json.dumps(depends_on))
    digests = {s: feature_digests(f) for s, f in splits.items()}
    longest = max(len(f["input_ids"]) for feats in splits.values() for f in feats)
    shard_examples = max(1, min(shard_examples, SHARD_ENTRIES // (top_k * longest)))  # large k: smaller shards
    for s, f in splits.items():
        depends_on["data"][s].update(examples=len(f), features_sha256=hashlib.sha256(digests[s].tobytes()).hexdigest())
    fingerprint = {"depends_on": depends_on, "top_k": top_k, "vocab_size": vocab_size, "id_dtype": id_dtype.__name__,
                   "value_dtype": value_dtype, "tail_temperatures": temperatures, "shard_examples": shard_examples,
                   "shared_vocab": None if shared is None else shared_vocab_record(shared)}
    done = _start_or_resume(out, fingerprint)
    if done is not None:
        try:
            open_cache(out)  # every shard still there and whole
            return done
        except OkdError as e:  # a shard lost or damaged since: build again what is missing
            log.warning("%s; rebuilding what is missing", e)
            atomic_write(out / "build.json", json.dumps(fingerprint, indent=1).encode())
            (out / "manifest.json").unlink()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher.to(device).eval()
    records: dict = {}
    bar = tqdm(total=sum(map(len, splits.values())), desc="okd teacher cache", unit="ex", disable=not progress)
    for s, feats in splits.items():
        shards = []
        for start in range(0, len(feats), shard_examples):
            part = feats[start:start + shard_examples]
            path = out / f"{s}-{start // shard_examples:05d}.safetensors"
            counts = [scored_count(f) for f in part]
            if not _shard_ok(path, counts, top_k):
                scored = _score_examples(teacher, part, vocab_size=vocab_size, k=top_k, temperatures=temperatures,
                                         pad_id=tokenizer.pad_token_id, batch_size=batch_size, device=device,
                                         dtypes=(id_dtype, np.dtype(value_dtype), np.float32), shared=shared)
                _write_shard(path, _shard_arrays(scored))
            shards.append({"file": path.name, "start": start, "end": start + len(part), "tokens": sum(counts),
                           "bytes": path.stat().st_size, "sha256": file_sha256(path)})
            bar.update(len(part))
        atomic_write(out / f"{s}.digests.bin", digests[s].tobytes())
        records[s] = {"examples": len(feats), "tokens": sum(r["tokens"] for r in shards),
                      "digests": f"{s}.digests.bin", "shards": shards}
    bar.close()
    tokens = sum(r["tokens"] for r in records.values())
    size = sum(sh["bytes"] for r in records.values() for sh in r["shards"])
    manifest = {"format": FORMAT, "version": VERSION, **fingerprint, "splits": records,
                "tokens": tokens, "bytes": size, "bytes_per_token": round(size / max(tokens, 1), 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_s": round(time.monotonic() - t0, 1)}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    (out / "build.json").unlink(missing_ok=True)
    return manifest


def shared_vocab_record(shared) -> dict:
    """What a cross-tokenizer cache records of the shared vocabulary's teacher ids (checked at training)."""
    ids = np.asarray(shared, dtype=np.int64)
    return {"size": len(ids), "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}


def check_top_k(k, vocab_size: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise OkdError(f"--top-k must be a positive number of tokens, got {k}")
    if k > vocab_size:
        raise OkdError(f"--top-k {k} is larger than the vocabulary ({vocab_size} tokens); use at most "
                       f"{vocab_size} (--top-k all stores the full distribution)")
    return k


# ----------------------------------------------------------------------------- reading

@dataclass
class TeacherCache:
    """An opened cache: the manifest and, per split, memory-mapped shards (see `lookup`)."""

    directory: Path
    manifest: dict
    shards: dict  # split -> (starts [S] int64, [shard arrays])

    def __post_init__(self):
        m = self.manifest
        self.top_k, self.vocab_size = int(m["top_k"]), int(m["vocab_size"])
        self.tail_temperatures = [float(t) for t in m["tail_temperatures"]]

    def examples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["examples"]) if split in self.manifest["splits"] else 0

    def lookup(self, split: str, example_indices):
        """(ids [N, k] long, logp [N, k] float32, log_tail [N, m] float32) for these examples' scored tokens,
        example by example in the given order, positions in order (= Scored.from_labels order); log_tail's
        columns are log Σ_tail p^(1/τ) for τ in `tail_temperatures`."""
        rows = self.rows(split, example_indices, ("ids", "logp", "log_tail"))
        return rows["ids"], rows["logp"], rows["log_tail"]

    def rows(self, split: str, example_indices, names) -> dict:
        """{name: tensor} of these arrays (module doc; ids as long, the rest float32) for these examples'
        scored tokens, in lookup's order."""
        import torch

        if split not in self.shards:
            raise OkdError(f"teacher cache {self.directory} has no {split!r} split; {REBUILD}")
        starts, arrays = self.shards[split]
        idx = [int(i) for i in torch.as_tensor(example_indices).reshape(-1).tolist()]
        n = self.examples(split)
        if any(i < 0 or i >= n for i in idx):
            raise OkdError(f"example index out of range for the teacher cache's {n} {split} examples; "
                           f"the cache was built on other data: {REBUILD}")
        parts = []
        for i in idx:
            s = int(np.searchsorted(starts, i, side="right")) - 1
            a = arrays[s]
            lo, hi = a["offsets"][i - starts[s]], a["offsets"][i - starts[s] + 1]
            parts.append([a[name][lo:hi] for name in names])
        return {name: torch.from_numpy(np.concatenate([p[j] for p in parts]).astype(
            np.int64 if name.endswith("ids") else np.float32)) for j, name in enumerate(names)}

    def check_features(self, split: str, features: list[dict]) -> None:
        """The run's features must be the cache's (or their first len(features), e.g. data.train_limit)."""
        n = self.examples(split)
        if len(features) > n:
            raise OkdError(f"teacher cache {self.directory} was built on other data: it holds {n} {split} examples, "
                           f"the run has {len(features)}; {REBUILD}")
        stored = np.fromfile(self.directory / self.manifest["splits"][split]["digests"], dtype=np.uint8).reshape(-1, 8)
        bad = np.flatnonzero((stored[:len(features)] != feature_digests(features)).any(1))
        if len(bad):
            raise OkdError(f"teacher cache {self.directory} was built on other data: {split} example {bad[0]} "
                           "differs from the run's (data, tokenizer, template or max_length changed); "
                           f"{REBUILD}")


def open_cache(directory) -> TeacherCache:
    """Open DIR, checking the manifest and that every shard is present and whole (OkdError naming it)."""
    d = Path(os.path.expanduser(str(directory)))
    if not d.is_dir():
        raise OkdError(f"teacher.cache {str(d)!r} does not exist; build it with "
                       f"`okd teacher cache -c CONFIG.yaml -o {d}`")
    mf = d / "manifest.json"
    if not mf.is_file():
        if (d / "build.json").is_file():
            raise OkdError(f"teacher cache {str(d)!r} is unfinished (its build was interrupted); rerun the same "
                           "`okd teacher cache` command to finish it")
        raise OkdError(f"{str(d)!r} is not a teacher cache (no manifest.json); build one with "
                       f"`okd teacher cache -c CONFIG.yaml -o {d}`")
    try:
        manifest = json.loads(mf.read_text())
        assert manifest["format"] == FORMAT and isinstance(manifest["splits"], dict)
        assert all(k in manifest for k in ("version", "depends_on", "top_k", "vocab_size", "tail_temperatures"))
    except Exception:  # noqa: BLE001
        raise OkdError(f"{str(mf)!r} is not a teacher cache manifest; {REBUILD}") from None
    if manifest["version"] != VERSION:
        raise OkdError(f"teacher cache {str(d)!r} has format version {manifest['version']}, this okd reads "
                       f"{VERSION}; {REBUILD}")
    shards = {}
    for split, rec in manifest["splits"].items():
        arrays = [read_shard(d / sh["file"], sh["bytes"]) for sh in rec["shards"]]
        for sh, a in zip(rec["shards"], arrays):
            if a["offsets"].shape != (sh["end"] - sh["start"] + 1,) or a["ids"].shape[0] != sh["tokens"]:
                raise OkdError(f"teacher cache shard {str(d / sh['file'])!r} does not match the manifest; "
                               f"{REPAIR.format(dir=d)}")
        dig = d / rec["digests"]
        if not dig.is_file() or dig.stat().st_size != 8 * rec["examples"]:
            raise OkdError(f"teacher cache file {str(dig)!r} is missing or cut short; {REPAIR.format(dir=d)}")
        shards[split] = (np.array([sh["start"] for sh in rec["shards"]], dtype=np.int64), arrays)
    return TeacherCache(directory=d, manifest=manifest, shards=shards)


def _mismatch(cache: TeacherCache, what: str, built, now) -> OkdError:
    short = (lambda v: v[:12] + "…" if isinstance(v, str) and len(v) > 16 else v)
    return OkdError(f"teacher cache {cache.directory} does not match the config: {what} differs (cache: "
                    f"{short(built)}, config: {short(now)}); {REBUILD}")


def validate_cache(cache: TeacherCache, cfg, tokenizer, *, vocab_size: int | None = None,
                   template: str | None = None) -> None:
    """Refuse a cache built for another teacher, tokenizer, template, max_length, data or vocabulary.
    (The features themselves are checked by `cache.check_features` once tokenised.) template: the one the
    cached tokens were formatted with (default data.template; a cross-tokenizer cache: the teacher's)."""
    dep = cache.manifest["depends_on"]
    cross = cfg.method.cross_tokenizer != "off"
    if cross and not dep.get("cross_tokenizer"):
        raise OkdError(f"teacher cache {cache.directory} was built for a run without method.cross_tokenizer (on the "
                       f"student's tokens); {REBUILD}")
    if not cross and dep.get("cross_tokenizer"):
        raise OkdError(f"teacher cache {cache.directory} holds the teacher's predictions on its own tokens, for "
                       "a method.cross_tokenizer run; set method.cross_tokenizer, or build a cache for this run")
    if cfg.teacher.path:
        now = teacher_identity(cfg.teacher)
        for key, what in (("weights_sha256", "the teacher (teacher.path weights)"),
                          ("config_sha256", "the teacher's config.json")):
            if dep["teacher"].get(key) != now[key]:
                raise _mismatch(cache, what, dep["teacher"].get(key), now[key])
    if dep["tokenizer_sha256"] != tokenizer_sha256(tokenizer):
        raise _mismatch(cache, "the tokenizer", dep["tokenizer_sha256"], tokenizer_sha256(tokenizer))
    for key, now in (("template", template or cfg.data.template), ("max_length", cfg.data.max_length)):
        if dep[key] != now:
            raise _mismatch(cache, f"data.{key}", dep[key], now)
    built = dep["data"].get("train", {})
    now = source_sha256(cfg.data.train, "train") if cfg.data.train else None
    if built.get("sha256") and now and built["sha256"] != now:
        raise _mismatch(cache, "data.train (file contents)", built["sha256"], now)
    if vocab_size is not None and vocab_size != cache.vocab_size:
        raise _mismatch(cache, "the vocabulary size", cache.vocab_size, vocab_size)


def validate_cross_cache(cache: TeacherCache, cfg, teacher_tokenizer, student_tokenizer, shared) -> None:
    """A cache for a method.cross_tokenizer run: built on the teacher's tokens (validate_cache with its
    tokenizer and template), for this student's tokenizer and template, with this shared vocabulary."""
    from okd.crosstok.data import teacher_template

    validate_cache(cache, cfg, teacher_tokenizer, vocab_size=len(teacher_tokenizer),
                   template=teacher_template(cfg, teacher_tokenizer))
    dep = cache.manifest["depends_on"]["cross_tokenizer"]
    for what, built, now in (("the student's tokenizer", dep["student_tokenizer_sha256"],
                              tokenizer_sha256(student_tokenizer)),
                             ("data.template", dep["student_template"], cfg.data.template),
                             ("the shared vocabulary", cache.manifest.get("shared_vocab"), shared_vocab_record(shared))):
        if built != now:
            raise _mismatch(cache, what, built, now)
