"""A checkpoint's manifest.json: the size and sha256 of each of its files, written before state.json marks it
complete, so that damage to any file (cut short, changed, missing) is found before a resume loads anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path) -> None:
    """{relative path: {bytes, sha256}} of every file of a checkpoint but the manifest and state.json (written
    after it; it is checked by parsing); the rng files of every rank and DeepSpeed's partitions included."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST, "state.json"))
    (root / MANIFEST).write_text(json.dumps(
        {"files": {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}},
        indent=1))


def manifest_problem(path: Path) -> tuple[str, str] | None:
    """(file, what is wrong with it) for the first file that does not match the manifest, or None."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return MANIFEST, "missing"
    except (OSError, ValueError, KeyError, TypeError):
        return MANIFEST, "not the manifest okd writes"
    if not isinstance(files, dict):
        return MANIFEST, "not the manifest okd writes"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return name, "missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return name, f"{size} bytes, written with {want['bytes']}"
        if _sha256(f) != want["sha256"]:
            return name, "its contents changed since it was written (sha256)"
    return None
