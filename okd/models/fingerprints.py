"""Fingerprints of what a teacher cache depends on (teacher weights, tokenizer, data files, encoded examples)
and the words for how two fingerprints differ: what okd.models.teacher_cache records and checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from okd.errors import OkdError

MEMO_MIN_BYTES = 64 << 20

def file_sha256(path: str | Path) -> str:
    """sha256 of a file; for files of 64 MiB and more (weights, shards) remembered per (path, size, mtime)
    in okd_home()/file_hashes.json, so that a training start does not re-read a large teacher."""
    path = Path(path).resolve()
    st = path.stat()
    memo_file = key = memo = None
    if st.st_size >= MEMO_MIN_BYTES:
        from okd.paths import okd_home

        key, memo_file = f"{path}|{st.st_size}|{st.st_mtime_ns}", okd_home() / "file_hashes.json"
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if memo_file is not None:
        memo[key] = h.hexdigest()
        memo = dict(list(memo.items())[-1000:])  # the most recent entries
        atomic_write(memo_file, json.dumps(memo).encode())
    return h.hexdigest()


def _files_sha256(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.relative_to(root)}={file_sha256(f)};".encode())
    return h.hexdigest()


def teacher_identity(model_cfg) -> dict:
    """The teacher as a config names it, with a sha256 over its weight files (no model is loaded)."""
    from okd.models.loading import resolve_model_source

    source, gguf = resolve_model_source(model_cfg.path, model_cfg.gguf_file)
    root = Path(source)
    if not root.is_dir():  # a hub id: its files in the local hub cache, if they are there
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(source, revision=model_cfg.revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached locally
            raise OkdError(f"teacher {model_cfg.path!r} is not on this machine, so its weights cannot be "
                           "hashed for the teacher cache; download it and give its directory as teacher.path") from None
    if gguf:
        weights = [root / gguf]
    else:
        weights = next((fs for pat in ("*.safetensors", "*.bin", "*.pt", "*.pth") if (fs := list(root.glob(pat)))), [])
        if not weights:
            raise OkdError(f"teacher directory {str(root)!r} holds no weight files (*.safetensors, *.bin)")
    config = root / "config.json"
    return {"path": model_cfg.path, "gguf_file": model_cfg.gguf_file, "revision": model_cfg.revision,
            "dtype": model_cfg.dtype, "weights_sha256": _files_sha256(weights, root),
            "config_sha256": file_sha256(config) if config.is_file() and not gguf else None}


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of what decides tokenisation: the serialised tokenizer (without padding/truncation
    settings), the vocabulary, the special tokens and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = {}
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    spec["vocab"] = sorted(tokenizer.get_vocab().items())
    spec["special"] = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    spec["chat_template"] = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def source_sha256(source: str, split: str) -> str | None:
    """sha256 of a local data file (or of every data file of a directory); None for a hub dataset."""
    path = Path(source).expanduser()
    if not path.exists():
        try:
            from okd.data.presets import resolve_data_preset

            found = resolve_data_preset(source, split)
        except (ImportError, OkdError):
            found = None
        if found is None:
            return None
        path = Path(found)
    if path.is_file():
        return file_sha256(path)
    files = [p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".json", ".arrow"))]
    return _files_sha256(files, path)


def feature_digests(features: list[dict]) -> np.ndarray:
    """[n, 8] uint8: a blake2b digest of each feature's input_ids and labels."""
    out = np.empty((len(features), 8), dtype=np.uint8)
    for i, f in enumerate(features):
        h = hashlib.blake2b(np.asarray(f["input_ids"], dtype=np.int64).tobytes(), digest_size=8)
        h.update(np.asarray(f["labels"], dtype=np.int64).tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


def scored_count(feature: dict) -> int:
    """Rows an example has in the cache: positions t with labels[t + 1] != -100."""
    return int((np.asarray(feature["labels"][1:]) != -100).sum())


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint_diffs(a, b, prefix: str = "") -> list[str]:
    """Every dotted key where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in fingerprint_diffs(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


# the fingerprint's keys as the user sets them (`okd teacher cache` flags, config keys)
_SETTINGS = {"top_k": "--top-k", "tail_temperatures": "--temperature", "value_dtype": "--dtype",
             "depends_on.max_length": "data.max_length", "depends_on.template": "data.template",
             "depends_on.tokenizer_sha256": "tokenizer (student.path)"}
# keys that follow from others: named only when nothing the user sets explains them
_DERIVED = ("shard_examples", "id_dtype", "vocab_size", ".features_sha256", ".examples")


def describe_changes(old: dict, new: dict) -> str:
    """What differs between two fingerprints, in the user's terms: 'data.max_length (256 -> 128)', ..."""
    def get(tree, key):
        for k in key.split("."):
            tree = tree.get(k) if isinstance(tree, dict) else None
        return tree

    def name(key: str) -> str:
        if key in _SETTINGS:
            return _SETTINGS[key]
        if key.startswith("depends_on.teacher."):
            return "teacher (teacher.path, its weights or dtype)"
        if key.startswith("depends_on.data."):
            split, field = key.split(".")[2], key.split(".")[-1]
            return {"sha256": f"data.{split} (the file's contents)", "source": f"data.{split}"}.get(
                field, f"data.{split}.{field}" if field in ("limit", "skip_invalid") else f"the encoded data.{split} "
                "examples")
        return key

    diffs = fingerprint_diffs(old, new)
    primary = [d for d in diffs if not d.endswith(_DERIVED) and d not in _DERIVED]
    shown, seen = [], set()
    for d in primary or diffs:
        label = name(d)
        if label in seen:
            continue
        seen.add(label)
        a, b = get(old, d), get(new, d)
        short = all(isinstance(v, (int, float, str, list)) and len(str(v)) <= 40 for v in (a, b))
        shown.append(f"{label} ({a!r} -> {b!r})" if short else label)
    return ", ".join(shown)
