"""Reading instruction data into `Example`s.

Sources: a JSON Lines / JSON array file, a directory of them (split files picked by name), a named
preset (`okd.data.presets`), a `datasets` save_to_disk directory (Dataset or DatasetDict), or a Hugging Face
Hub dataset id. Formats are detected per record:
Dolly (instruction/context/response), Alpaca (instruction/input/output), prompt/completion, chat
`messages` ({role, content}) and ShareGPT `conversations` ({from, value}).

Every bad record is reported as one `OkdError` naming the file and line, unless `skip_invalid` is set,
in which case it is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from okd.errors import OkdError

log = logging.getLogger("okd.data")

DATA_SUFFIXES = (".jsonl", ".json")
# File stems that mark a directory as split into train/valid/test; aliases map to the canonical split.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid", "eval": "valid",
    "test": "test",
}
# ShareGPT `from` values (and a few chat-dialect variants) mapped onto chat-template roles.
ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}
SKIP_HINT = "fix the record or set data.skip_invalid: true"
FORMATS_HINT = ("expected instruction/input/output (Alpaca), instruction/context/response (Dolly), "
                "prompt/completion, or messages/conversations (chat)")


@dataclass(frozen=True)
class Example:
    instruction: str          # the request; for chat records: the last user message
    response: str             # the target answer (the final assistant message for chat records)
    input: str = ""           # extra context: Alpaca `input`, Dolly `context`
    messages: tuple = ()      # chat records: the whole prompt conversation before the final assistant turn
    source: str = ""          # "path:line" of where it came from, for messages


class InvalidRecord(ValueError):
    """A record that cannot become an Example; the message says why (no location)."""


def _show(text: Any, limit: int = 60) -> str:
    """A piece of the user's data quoted in a message: on one line, printable, and short."""
    text = str(text)
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape (\ud800) in the JSON: no tokenizer takes it
        raise InvalidRecord(f"field '{what}' holds text that is not valid Unicode ({e.reason} at character "
                            f"{e.start})") from None
    return value


# ---------------------------------------------------------------------------------------------------
# records -> Example


def _field(rec: dict, key: str, *, what: str | None = None) -> str:
    """The string value of `key`; None/absent -> "", numbers -> str, anything else is invalid."""
    value = rec.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return _text(value, what or key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. math answers stored as numbers
    raise InvalidRecord(f"field '{what or key}' must be a string, got {type(value).__name__}")


def _response(rec: dict, key: str) -> str:
    if key not in rec:
        raise InvalidRecord(f"missing field '{key}'")
    text = _field(rec, key)
    if not text.strip():
        raise InvalidRecord(f"empty response (field '{key}')")
    return text


def _content(msg: Any, j: int, key: str) -> tuple[str, str]:
    """(role, content) of one chat message, accepting {role, content} and ShareGPT {from, value}."""
    if not isinstance(msg, dict):
        raise InvalidRecord(f"{key}[{j}] must be an object with role and content, got {type(msg).__name__}")
    role = msg.get("role", msg.get("from"))
    if not isinstance(role, str) or not role:
        raise InvalidRecord(f"{key}[{j}] has no 'role' (or ShareGPT 'from')")
    ckey = "content" if "content" in msg else "value"
    content = msg.get(ckey)
    if isinstance(content, list):  # OpenAI-style content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if any(t is not None and not isinstance(t, str) for t in parts):
            raise InvalidRecord(f"{key}[{j}].{ckey}: a content part's 'text' must be a string")
        content = "".join(t for t in parts if t)
    elif content is not None and not isinstance(content, str):
        raise InvalidRecord(f"{key}[{j}].{ckey} must be a string, got {type(content).__name__}")
    _text(role, f"{key}[{j}].role")
    return ROLE_ALIASES.get(role.strip().lower(), role.strip().lower()), _text(content or "", f"{key}[{j}].{ckey}")


def _chat_example(rec: dict, key: str, source: str) -> Example:
    msgs = rec[key]
    if not isinstance(msgs, list) or not msgs:
        raise InvalidRecord(f"field '{key}' must be a non-empty list of messages")
    turns = [_content(m, j, key) for j, m in enumerate(msgs)]
    last_role, response = turns[-1]
    if last_role != "assistant":
        raise InvalidRecord(f"the last message in '{key}' must be the assistant's response, got role "
                            f"'{_show(last_role)}'")
    if not response.strip():
        raise InvalidRecord(f"empty response (last assistant message in '{key}')")
    prompt = turns[:-1]
    users = [c for r, c in prompt if r == "user"]
    if not users:
        raise InvalidRecord(f"no user message before the final assistant message in '{key}'")
    if not users[-1].strip():
        raise InvalidRecord(f"empty instruction (last user message in '{key}')")
    return Example(instruction=users[-1], response=response,
                   messages=tuple({"role": r, "content": c} for r, c in prompt), source=source)


def record_to_example(rec: Any, source: str = "") -> Example:
    """Turn one record (a dict) into an Example, detecting its format; raises InvalidRecord."""
    if not isinstance(rec, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(rec).__name__}")
    for key in ("messages", "conversations"):
        if key in rec:
            return _chat_example(rec, key, source)
    if "instruction" in rec:
        if "output" in rec:  # Alpaca
            response, extra = _response(rec, "output"), _field(rec, "input")
        elif "response" in rec:  # Dolly
            response, extra = _response(rec, "response"), _field(rec, "context")
        else:
            raise InvalidRecord("missing field 'output' (Alpaca: instruction/input/output) "
                                "or 'response' (Dolly: instruction/context/response)")
        instruction = _field(rec, "instruction")
        if not instruction.strip():
            raise InvalidRecord("empty instruction (field 'instruction')")
        return Example(instruction=instruction, response=response, input=extra, source=source)
    if "prompt" in rec or "completion" in rec:
        if "prompt" not in rec:
            raise InvalidRecord("missing field 'prompt'")
        response = _response(rec, "completion")
        prompt = _field(rec, "prompt")
        if not prompt.strip():
            raise InvalidRecord("empty prompt (field 'prompt')")
        return Example(instruction=prompt, response=response, source=source)
    keys = ", ".join(_show(k, 40) for k in sorted(map(str, rec))[:12]) + (", ..." if len(rec) > 12 else "") if rec else "none"
    raise InvalidRecord(f"record matches no known format (keys: {keys}); {FORMATS_HINT}")


# ---------------------------------------------------------------------------------------------------
# files -> records with line numbers

_WS = re.compile(r"\s*")


def _iter_json_array(text: str, start: int, name: str) -> Iterator[tuple[int, Any]]:
    """(line, element) for the JSON array at text[start], parsed element by element for line numbers."""
    dec = json.JSONDecoder()
    i = _WS.match(text, start + 1).end()
    line, counted = 1, 0
    if text.startswith("]", i):
        return
    while True:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise OkdError(f"{name} line {e.lineno}: malformed JSON ({e.msg}); a JSON array cannot be "
                           "read past a syntax error, fix the file") from None
        except (ValueError, RecursionError) as e:  # a number of over 4300 digits, nesting too deep
            at = text.count("\n", 0, i) + 1
            raise OkdError(f"{name} line {at}: unreadable JSON ({_json_problem(e)}); fix the file") from None
        line += text.count("\n", counted, i)
        counted = i
        yield line, obj
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
        elif text.startswith("]", i):
            if text[i + 1:].strip():
                at = text.count("\n", 0, i) + 1
                raise OkdError(f"{name} line {at}: unexpected content after the end of the JSON array")
            return
        else:
            at = text.count("\n", 0, i) + 1
            raise OkdError(f"{name} line {at}: malformed JSON (expected ',' or ']' in the array)")


# Files okd does not read, by suffix: what they are (the message says to convert them).
OTHER_FORMATS = {".gz": "gzip-compressed", ".bz2": "bzip2-compressed", ".xz": "xz-compressed", ".zst": "zstd-compressed",
                 ".zip": "zip archive", ".parquet": "Parquet", ".arrow": "Arrow", ".csv": "CSV", ".tsv": "TSV",
                 ".xlsx": "Excel"}


def _read_text(path: Path, name: str) -> str:
    kind = OTHER_FORMATS.get(path.suffix.lower())
    if kind:
        todo = "decompress it" if kind.endswith("compressed") else "convert it to JSON Lines"
        raise OkdError(f"{name}: a {kind} file; okd reads JSON Lines (.jsonl) or a JSON array (.json) of records: "
                       f"{todo} first")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as e:
        raise OkdError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise OkdError(f"{name}: cannot read ({e.strerror})") from None


def _whole_object(text: str, name: str) -> dict | None:
    """A file holding one pretty-printed JSON object (not JSON Lines): the object, or an error when its
    records sit under a key ({"data": [...]}, as some exports write them); None when it is not one."""
    if text.count("\n", 0, len(text.rstrip())) == 0:
        return None  # one line: JSON Lines with one record
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    lists = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if lists and not any(k in obj for k in ("messages", "conversations")):
        raise OkdError(f"{name}: one JSON object whose records are under {_show(lists[0])!r}, not JSON Lines or a JSON "
                       f"array of records; write them out as an array (e.g. jq '.{_show(lists[0])}' {name})")
    return obj


def _iter_file(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    """(line, record-or-InvalidRecord) for a JSON Lines file or a JSON array file."""
    text = _read_text(path, name)
    start = _WS.match(text).end()
    if start == len(text):
        raise OkdError(f"{name}: the file is empty; expected JSON Lines or a JSON array of records")
    if text.startswith("[", start):
        yield from _iter_json_array(text, start, name)
        return
    whole = _whole_object(text, name) if text.startswith("{", start) else None
    if whole is not None:
        yield text.count("\n", 0, start) + 1, whole
        return
    first = True
    for lineno, line in enumerate(text.split("\n"), 1):  # (not splitlines: U+2028 may sit inside a string)
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if first and not path.name.lower().endswith(DATA_SUFFIXES) and not line.lstrip().startswith("{"):
                raise OkdError(f"{name}: not JSON Lines or a JSON array (line {lineno} is not JSON); okd reads "
                               ".jsonl/.json records: convert the file first") from None
            # malformed lines are record errors (skippable), unlike a broken JSON array
            yield lineno, InvalidRecord(f"malformed JSON ({e.msg} at column {e.colno})")
        except (ValueError, RecursionError) as e:
            yield lineno, InvalidRecord(f"unreadable JSON ({_json_problem(e)})")
        else:
            yield lineno, rec
        first = False


def _json_problem(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return " ".join(str(e).split(":")[0].split())  # "Exceeds the limit (4300 digits) for integer string conversion"


def _display(path: Path) -> str:
    """The path as the user would recognise it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _split_of(path: Path) -> str | None:
    """The split a file name stands for (train.jsonl, validation-00000.json, ...), or None."""
    stem = path.name.split(".")[0].lower()
    for alias, split in SPLIT_ALIASES.items():
        if stem == alias or re.match(rf"{alias}[-_]", stem):
            return split
    return None


def _dir_files(directory: Path, split: str, name: str) -> tuple[list[Path], list[Path]]:
    """(files read for `split`, data files not read: neither named for a split nor the only kind there)."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    except OSError as e:
        raise OkdError(f"{name}: cannot read the directory ({e.strerror})") from None
    if not files:
        raise OkdError(f"{name}: the directory has no .jsonl or .json files")
    by_split: dict[str, list[Path]] = {}
    for p in files:
        s = _split_of(p)
        if s is not None:
            by_split.setdefault(s, []).append(p)
    if not by_split:
        return files, []  # not split: read everything
    want = SPLIT_ALIASES.get(split.lower(), split.lower())
    if want not in by_split:
        have = ", ".join(sorted(by_split))
        raise OkdError(f"{name}: no file for split '{split}' (found splits: {have}); "
                       "name the file train.jsonl / valid.jsonl / test.jsonl or point at the file")
    return by_split[want], [p for p in files if _split_of(p) is None]


def _is_dir(path: Path) -> bool:
    return os.path.isdir(path)  # (unlike Path.is_dir, False for a name too long or holding a NUL)


def _is_file(path: Path) -> bool:
    return os.path.isfile(path)


def data_files(source: str | os.PathLike, split: str = "train") -> tuple[list[Path], list[Path]] | None:
    """The local files `source` reads for `split` and the data files beside them that it does not read
    (a directory split by file name: train.jsonl is read, notes.jsonl is not); None for a named preset
    or a hub dataset id. Raises the reader's OkdError for a missing path or an empty directory."""
    source = os.fspath(source)
    path = Path(source).expanduser()
    if _is_saved_dataset(path):
        return None  # read through datasets.load_from_disk, like a hub dataset
    if _is_dir(path):
        return _dir_files(path, split, source)
    if _is_file(path):
        return [path], []
    if _is_preset_name(source) or _looks_like_hub_id(source):
        return None
    raise OkdError(f"data source '{source}' does not exist (no such file or directory, and not "
                   "a named data preset); check the path")


def _is_preset_name(source: str) -> bool:
    try:
        from okd.data.presets import is_data_preset
    except ImportError:
        return False
    return is_data_preset(source)


# ---------------------------------------------------------------------------------------------------
# sources


def _looks_like_hub_id(source: str) -> bool:
    """`owner/name` or `name` without a data-file suffix, and not below a local directory that exists
    (data/dolly with data/ here is a missing local path); anything else is treated as a local path."""
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) is None or source.endswith(DATA_SUFFIXES):
        return False
    if source.startswith(".") or ".." in source or "--" in source:
        return False
    return "/" not in source or not _is_dir(Path(source.split("/")[0]))


def _resolve_preset(name: str, split: str) -> Path | None:
    try:  # written by another component; absent means "no presets"
        from okd.data.presets import resolve_data_preset
    except ModuleNotFoundError as e:
        if e.name != "okd.data.presets":
            raise  # a bug inside the presets module should surface, not read as "no such preset"
        return None
    found = resolve_data_preset(name, split)
    return Path(found) if found is not None else None


def _iter_hub(source: str, split: str) -> Iterator[tuple[str, str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - any failure means "not loadable", reported to the user
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OkdError(f"data source '{source}' does not exist locally and could not be loaded from the "
                       f"Hugging Face Hub as a dataset id ({type(e).__name__}: {first}); check the path "
                       "or use a named data preset") from None
    for i, row in enumerate(ds):
        yield f"{source} ({split}) row {i}", f"{source}:{i}", row


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' save_to_disk: a Dataset (state.json, dataset_info.json, *.arrow) or a
    DatasetDict (dataset_dict.json and one such directory per split)."""
    return _is_dir(path) and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def _iter_saved(path: Path, source: str, split: str) -> Iterator[tuple[str, str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged or partial save_to_disk directory
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OkdError(f"{source}: a `datasets` save_to_disk directory that cannot be loaded "
                       f"({type(e).__name__}: {first}); save it again") from None
    if isinstance(ds, datasets.DatasetDict):
        names = {SPLIT_ALIASES.get(k.lower(), k.lower()): k for k in ds}
        want = SPLIT_ALIASES.get(split.lower(), split.lower())
        if want not in names:
            raise OkdError(f"{source}: this DatasetDict has no split '{split}' (it has {', '.join(ds)}); point at "
                           "one with data.train / data.valid, or save that split")
        ds = ds[names[want]]
    for i, row in enumerate(ds):
        yield f"{source} ({split}) row {i}", f"{source}:{i}", row


def _iter_records(source: str, split: str) -> Iterator[tuple[str, str, Any]]:
    """(where, Example.source, record-or-InvalidRecord) for every record of the source."""
    path = Path(source).expanduser()
    if _is_saved_dataset(path):
        yield from _iter_saved(path, source, split)
        return
    if _is_dir(path):
        files, _ = _dir_files(path, split, source)
    elif _is_file(path):
        files = [path]
    else:
        preset = _resolve_preset(source, split)
        if preset is not None:
            yield from _iter_records(str(preset), split)
            return
        if not _looks_like_hub_id(source):
            raise OkdError(f"data source '{source}' does not exist (no such file or directory, and not "
                           "a named data preset); check the path")
        yield from _iter_hub(source, split)
        return
    for f in files:
        name = _display(f)
        for line, rec in _iter_file(f, name):
            yield f"{name} line {line}", f"{name}:{line}", rec


def load_examples_with_stats(source: str | os.PathLike, *, split: str = "train", skip_invalid: bool = False,
                             limit: int | None = None) -> tuple[list[Example], dict]:
    """Like `load_examples`, also returning stats: `read` (records seen), `skipped`, `first_problem`."""
    if limit is not None and limit < 1:
        raise OkdError(f"data limit must be a positive number of examples, got {limit}")
    source = os.fspath(source)
    files = data_files(source, split)
    if files and files[1]:
        names = ", ".join(_show(p.name) for p in files[1][:5]) + (", ..." if len(files[1]) > 5 else "")
        log.warning("%s: %s not read: the directory names its files by split (%s) and only those of split '%s' "
                    "are read; rename the others (e.g. %s-2.jsonl) or point at a file", source, names,
                    ", ".join(_show(p.name) for p in files[0][:3]), split, split)
    examples: list[Example] = []
    read = skipped = 0
    first_problem = ""
    for where, src, rec in _iter_records(source, split):
        read += 1
        try:
            if isinstance(rec, InvalidRecord):
                raise rec
            examples.append(record_to_example(rec, src))
        except InvalidRecord as e:
            if not skip_invalid:
                raise OkdError(f"{where}: {e}; {SKIP_HINT}") from None
            skipped += 1
            first_problem = first_problem or f"{where}: {e}"
            continue
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        if read == 0:
            raise OkdError(f"{source}: no records found")
        raise OkdError(f"{source}: no valid records ({skipped} of {read} invalid; first: {first_problem})")
    if skipped:  # data.skip_invalid: say on the console how many were dropped
        log.warning("data.skip_invalid: skipped %d invalid record(s) of %d in %s (first: %s)", skipped, read,
                    source, first_problem)
    stats = {"read": read, "skipped": skipped, "first_problem": first_problem}
    stats["ignored_files"] = [str(p) for p in files[1]] if files else []
    return examples, stats


def load_examples(source: str | os.PathLike, *, split: str = "train", skip_invalid: bool = False,
                  limit: int | None = None) -> list[Example]:
    """Read examples from a file, directory, named preset or hub dataset (see the module doc); invalid
    records skipped (skip_invalid) and data files a split directory does not read are logged as warnings."""
    return load_examples_with_stats(source, split=split, skip_invalid=skip_invalid, limit=limit)[0]
