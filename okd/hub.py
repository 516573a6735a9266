"""`okd push RUN --repo ORG/NAME`: a run's student (with its model card) to the Hugging Face hub.

One commit (huggingface_hub's HfApi.create_repo + create_commit) holds:
- the student's files at the repository root (config, weights, tokenizer, README.md: the model card);
- `online_module/` (OKD runs: the LoRA adapter of the teacher, with its card), unless left out;
- `okd/config.yaml`, `okd/summary.json`, `okd/metrics.jsonl`: how the run was made and how it went.
Checkpoints stay local. What is published names no machine-local path: the cards are written anew for the
repository (its id in the usage snippets), the adapter's `base_model_name_or_path` is the teacher's hub id
(a preset's, or `teacher_repo` for a local teacher, which is then required), and the local paths of
config.yaml and summary.json are replaced by their last part.
The token is huggingface_hub's (`hf auth login`, $HF_TOKEN) unless `token` is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from okd.errors import OkdError

REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl")


def check_repo_id(repo_id: str) -> str:
    if not REPO_RE.match(repo_id or "") or ".." in repo_id or len(repo_id) > 96:
        raise OkdError(f"--repo {repo_id!r}: give the hub repository as ORG/NAME (letters, digits, - _ .)")
    return repo_id


def resolve_run_dir(path: str | Path) -> Path:
    """A finished run directory (student/ with config.json) from the run or its student/."""
    p = Path(path)
    if p.name == "student" and (p.parent / "config.yaml").is_file():
        p = p.parent
    if not (p / "student" / "config.json").is_file():
        raise OkdError(f"{str(p)!r} is not a finished run: no student/config.json (push the output_dir of a "
                       "completed okd train)")
    return p


def _files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    return [(f"{prefix}{f.relative_to(folder).as_posix()}", f) for f in sorted(folder.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)]


def push_plan(run_dir: Path, *, online_module: bool = True) -> list[tuple[str, Path]]:
    """(path in the repository, local file) of everything pushed."""
    plan = _files(run_dir / "student", "")
    if online_module and (run_dir / "online_module").is_dir():
        plan += _files(run_dir / "online_module", "online_module/")
    plan += [(f"okd/{name}", run_dir / name) for name in RUN_FILES if (run_dir / name).is_file()]
    return plan


def _local_paths(tree: dict) -> dict[str, str]:
    """{absolute local path in the run's config: what is published instead (its last part)}."""
    from okd.cards import local_name
    from okd.config import flatten

    out = {}
    for key, value in flatten(tree).items():
        if isinstance(value, str) and (value.startswith("/") or key == "output_dir"):
            out[value] = local_name(value) if key != "output_dir" else Path(value).name
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))  # longest first: no path replaced inside another


def published_files(run_dir: Path, repo_id: str, *, online_module: bool, teacher_repo: str | None) -> dict[str, bytes]:
    """The files whose published form differs from the local one, by their path in the repository."""
    import yaml

    from okd.cards import online_card, student_card, teacher_hub_id

    tree = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary = json.loads((run_dir / "summary.json").read_text())
    local = _local_paths(tree)

    def scrub(text: str) -> str:
        for path, short in local.items():
            text = text.replace(path, short)
        return text

    summary = json.loads(scrub(json.dumps(summary)))
    out = {"README.md": student_card(tree, summary, repo_id=repo_id).encode(),
           "okd/config.yaml": scrub((run_dir / "config.yaml").read_text()).encode(),
           "okd/summary.json": (json.dumps(summary, indent=1) + "\n").encode()}
    module = run_dir / "online_module"
    if online_module and module.is_dir():
        teacher = (tree.get("teacher") or {}).get("path")
        base = teacher_hub_id(teacher, teacher_repo)
        if base is None:
            raise OkdError(f"the online module is an adapter of the local teacher {Path(str(teacher)).name!r}, which "
                           "has no hub id: give it with --teacher-repo ORG/NAME (after pushing that teacher), or push "
                           "without the module (--no-online-module)")
        adapter = json.loads((module / "adapter_config.json").read_text())
        adapter["base_model_name_or_path"] = base
        out["online_module/adapter_config.json"] = (json.dumps(adapter, indent=2) + "\n").encode()
        out["online_module/README.md"] = online_card(tree, summary, repo_id=repo_id, teacher_repo=base).encode()
    return out


def _hub_error(e: Exception, repo_id: str) -> OkdError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    offline = any(w in type(e).__name__ for w in ("Connect", "Timeout", "Network")) or "resolve" in first.lower()
    hint = ("the hub could not be reached: check the network (or HF_ENDPOINT) and push again" if offline
            else "log in with `hf auth login` or set HF_TOKEN" if "401" in first or "403" in first
            or "token" in first.lower() else "check the repository name, your network and your hub permissions")
    return OkdError(f"push to {repo_id} failed ({type(e).__name__}: {first}); {hint}")


def push_run(run: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
             revision: str | None = None, commit_message: str | None = None, online_module: bool = True,
             teacher_repo: str | None = None, log: Callable[[str], None] = print) -> str:
    """Push a finished run to `repo_id` (created if needed) in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from okd.cards import ensure_cards

    check_repo_id(repo_id)
    if teacher_repo is not None:
        check_repo_id(teacher_repo)
    run_dir = resolve_run_dir(run)
    for card in ensure_cards(run_dir):
        log(f"wrote the model card {card}")
    plan = push_plan(run_dir, online_module=online_module)
    published = published_files(run_dir, repo_id, online_module=online_module, teacher_repo=teacher_repo) \
        if (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file() else {}
    size = sum(f.stat().st_size for _, f in plan)
    log(f"pushing {len(plan)} files ({size / 2**20:.1f} MiB) from {run_dir} to {repo_id}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=published.get(p, str(f))) for p, f in plan]
        info = api.create_commit(repo_id, ops,
                                 commit_message=commit_message or f"okd run {run_dir.name}", revision=revision,
                                 repo_type="model")
    except Exception as e:  # noqa: BLE001 - HfHubHTTPError, HFValidationError, and the HTTP client's own
        # errors (huggingface_hub's client library changes between versions: httpx, httpx2, requests)
        raise _hub_error(e, repo_id) from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    return str(url)
