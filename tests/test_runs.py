"""What a researcher does with a finished run (issue 17): its model cards, `okd plot`, `okd push` against a
stubbed hub, `okd eval` following the run's template and prompt length, prompts kept inside the model's
context, and file modes of what okd writes."""

from __future__ import annotations

import json
import os
import stat

import pytest

from okd.cards import ensure_cards, has_card, write_cards
from okd.cli import main
from okd.config import build_config


@pytest.fixture(scope="module")
def okd_run(tiny_dirs, tiny_data, tmp_path_factory):
    """A finished 2-step OKD run trained with the chat template and 40-token prompts, validated each step."""
    from okd.train import train

    out = tmp_path_factory.mktemp("runs") / "okd-chat"
    cfg = build_config({}, [f"teacher.path={tiny_dirs['teacher']}", f"student.path={tiny_dirs['student']}",
                            f"data.train={tiny_data}", f"data.valid={tiny_data}", "data.template=chat",
                            "data.max_length=160", "data.max_prompt_length=40", "data.valid_limit=4",
                            "method.name=okd", "online.rank=4", "train.max_steps=2", "train.batch_size=4",
                            "train.eval_every=1", f"output_dir={out}"])
    train(cfg, progress=False)
    return out


# ------------------------------------------------------------------ model cards

def test_cards_name_teacher_method_data_steps_metrics_and_command(okd_run, tiny_dirs):
    summary = json.loads((okd_run / "summary.json").read_text())
    import yaml

    tree = yaml.safe_load((okd_run / "config.yaml").read_text())
    paths = write_cards(okd_run, tree, summary, command="okd train -c x.yaml method.name=okd")
    assert [p.parent.name for p in paths] == ["student", "online_module"]
    card = (okd_run / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for needle in ("a local model `teacher`", "`okd`", "template `chat`", "2 steps", "valid_loss",
                   "okd train -c x.yaml method.name=okd", "**student initialisation**: a local model `",
                   "a local file `train.jsonl`"):
        assert needle in card, needle
    assert str(tiny_dirs["teacher"]) not in card and str(okd_run) not in card  # no machine-local path
    assert "None" not in card and "base_model:\n---" not in card and "okd-okd" not in card
    online = (okd_run / "online_module" / "README.md").read_text()
    assert "library_name: peft" in online and "rank 4" in online and "PeftModel.from_pretrained" in online
    assert has_card(okd_run / "student") and has_card(okd_run / "online_module")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(okd_run / "student")  # the card does not disturb loading


def test_a_teacher_under_its_own_terms_passes_them_to_the_student(okd_run, tiny_dirs, tmp_path):
    """A teacher directory with a NOTICE (as the gemma3-270m preset's: Gemma's terms count a distilled model
    as a Model Derivative): the student's card says the terms apply, the NOTICE and the terms file are copied
    next to it. A teacher without one adds nothing."""
    import shutil

    import yaml

    teacher = tmp_path / "termed"
    shutil.copytree(tiny_dirs["teacher"], teacher)
    (teacher / "NOTICE").write_text("Gemma is provided under and subject to the Gemma Terms of Use found at "
                                    "ai.google.dev/gemma/terms (a copy: GEMMA_TERMS.html).\n\nModified files: ...\n")
    (teacher / "GEMMA_TERMS.html").write_text("<html>terms</html>")
    run = tmp_path / "run"
    shutil.copytree(okd_run, run)
    tree = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    write_cards(run, tree, summary, command="okd train")
    assert "## Terms" not in (run / "student" / "README.md").read_text()
    tree["teacher"]["path"] = str(teacher)
    write_cards(run, tree, summary, command="okd train")
    card = (run / "student" / "README.md").read_text()
    assert "## Terms" in card and "subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms" in card
    assert (run / "student" / "NOTICE").read_text() == (teacher / "NOTICE").read_text()
    assert (run / "student" / "GEMMA_TERMS.html").is_file()


def test_cards_list_every_command_and_name_where_the_student_came_from(okd_run, tmp_path):
    """A resumed run's card lists the first command and the --resume one; base_model follows a local student to
    the hub model it was pruned from (okd_student.json) or its own card's base_model."""
    from okd.cards import base_model_of, student_card

    summary = {**json.loads((okd_run / "summary.json").read_text()),
               "commands": ["okd train -c x.yaml", "okd train -c x.yaml --resume"]}
    card = student_card({"method": {"name": "fkd"}, "student": {"path": "org/base"}, "data": {}}, summary)
    assert "okd train -c x.yaml\nokd train -c x.yaml --resume\n" in card and "resumed the run" in card
    assert 'base_model:\n- "org/base"' in card and '- "fkd"' in card
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "okd_student.json").write_text(json.dumps({"teacher": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert base_model_of(str(pruned)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    child = tmp_path / "run" / "student"
    child.mkdir(parents=True)
    (child / "README.md").write_text(student_card({"method": {"name": "sft"}, "student": {"path": str(pruned)},
                                                   "data": {}}, summary))
    assert base_model_of(str(child)) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a run from that run's student
    assert base_model_of(str(tmp_path)) is None


def test_resumed_run_records_both_commands(tiny_dirs, tiny_data, tmp_path, monkeypatch):
    import sys

    from okd.train import train

    args = [f"teacher.path={tiny_dirs['teacher']}", f"student.path={tiny_dirs['student']}", f"data.train={tiny_data}",
            "data.max_length=128", "method.name=sft", "train.batch_size=4", "train.save_every=1",
            f"output_dir={tmp_path / 'r'}"]
    monkeypatch.setattr(sys, "argv", ["okd", "train", "first"])
    train(build_config({}, args + ["train.max_steps=1"]), progress=False)
    (tmp_path / "r" / "summary.json").unlink()
    monkeypatch.setattr(sys, "argv", ["okd", "train", "second", "--resume"])
    train(build_config({}, args + ["train.max_steps=2"]), resume=True, progress=False)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["commands"] == ["okd train first", "okd train second --resume"] and s["command"] == s["commands"][-1]
    assert "okd train first\nokd train second --resume" in (tmp_path / "r" / "student" / "README.md").read_text()


def test_ensure_cards_replaces_peft_template_only(okd_run):
    (okd_run / "online_module" / "README.md").write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")
    (okd_run / "student" / "README.md").unlink()
    written = ensure_cards(okd_run)
    assert sorted(p.parent.name for p in written) == ["online_module", "student"]
    assert ensure_cards(okd_run) == []  # okd's own cards are kept
    # the trainer records the command in summary.json, and the regenerated card shows it
    summary = json.loads((okd_run / "summary.json").read_text())
    assert summary["command"] and summary["command"] in (okd_run / "student" / "README.md").read_text()


# ------------------------------------------------------------------ okd plot

def test_plot_draws_losses_and_module_dynamics(okd_run, tmp_path, capsys):
    records = [json.loads(line) for line in (okd_run / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_kl_online_teacher" in r for r in records)  # the dynamics the plot shows
    out = tmp_path / "fig" / "curves.png"
    assert main(["plot", str(okd_run), str(okd_run / "student"), "--labels", "a", "b", "-o", str(out)]) == 0
    assert out.stat().st_size > 5000 and "figure:" in capsys.readouterr().out
    from okd.eval.curves import _panels, read_metrics

    keys = [p[1] for p in _panels({"r": read_metrics(okd_run)})]
    assert keys[:2] == ["loss", "valid_loss"] and {"valid_kl_online_teacher", "online_update_norm"} <= set(keys)
    assert main(["plot", str(okd_run), "--x", "step", "-o", str(tmp_path / "s.png")]) == 0


def test_plot_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2


# ------------------------------------------------------------------ okd push (stubbed hub)

class FakeHub:
    """Records what HfApi would send; raises `fail` from create_commit when set."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        from huggingface_hub import HfApi

        self.repos, self.commits, self.fail = [], [], fail
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: self.repos.append((repo_id, kw)))
        monkeypatch.setattr(HfApi, "create_commit", self._commit)

    def _commit(self, repo_id, operations, **kw):  # a bound method on the class: not bound to the HfApi
        if self.fail is not None:
            raise self.fail
        ops = list(operations)
        self.commits.append((repo_id, {op.path_in_repo: op.path_or_fileobj for op in ops}, kw))
        from types import SimpleNamespace

        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")


def test_push_uploads_student_card_module_and_logs_in_one_commit(okd_run, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(okd_run), "--repo", "my-org/tiny-okd", "--private", "--message", "first",
                 "--teacher-repo", "my-org/teacher"]) == 0
    assert hub.repos == [("my-org/tiny-okd", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (repo, files, kw), = hub.commits
    assert kw["commit_message"] == "first"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert {"online_module/adapter_config.json", "online_module/README.md", "okd/config.yaml", "okd/summary.json",
            "okd/metrics.jsonl"} <= set(files)
    assert not any(p.startswith("checkpoints") for p in files)
    assert "pushed: https://hub.example/my-org/tiny-okd/commit/1" in capsys.readouterr().out
    assert main(["push", str(okd_run / "student"), "--repo", "my-org/x", "--no-online-module"]) == 0
    assert not any(p.startswith("online_module/") for p in hub.commits[-1][1])


def test_what_is_pushed_names_no_local_path(okd_run, tiny_dirs, monkeypatch, capsys):
    """The pushed cards carry the repository's id, the adapter's base model is the teacher's hub id (required for a
    local teacher), and config.yaml / summary.json keep the last part of each local path."""
    hub = FakeHub(monkeypatch)
    assert main(["push", str(okd_run), "--repo", "my-org/tiny-okd"]) == 2
    assert "adapter of the local teacher 'teacher', which has no hub id: give it with --teacher-repo" in \
        capsys.readouterr().err
    assert main(["push", str(okd_run), "--repo", "my-org/tiny-okd", "--teacher-repo", "my-org/tiny-teacher"]) == 0
    (_, files, _), = hub.commits
    text = {p: (f.decode() if isinstance(f, bytes) else open(f, encoding="utf-8", errors="replace").read())
            for p, f in files.items() if p.endswith((".md", ".json", ".yaml", ".jsonl"))}
    assert 'from_pretrained("my-org/tiny-okd")' in text["README.md"] and "PATH" not in text["README.md"]
    assert json.loads(text["online_module/adapter_config.json"])["base_model_name_or_path"] == "my-org/tiny-teacher"
    assert 'base_model:\n- "my-org/tiny-teacher"' in text["online_module/README.md"]
    for path, body in text.items():
        assert str(tiny_dirs["teacher"]) not in body and str(okd_run.parent) not in body, path


def test_push_errors_are_one_line(okd_run, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(headers={}, request=None, status_code=401)
    FakeHub(monkeypatch, fail=HfHubHTTPError("401 Client Error: Unauthorized for url: https://hub/api\nmore",
                                             response=response))
    assert main(["push", str(okd_run), "--repo", "org/name", "--no-online-module"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the "pushing N files" status line)
    assert err.startswith("okd: error: push to org/name failed") and "401" in err and "hf auth login" in err
    assert "more" not in err
    assert main(["push", str(okd_run), "--repo", "org/na me"]) == 2
    assert main(["push", str(tmp_path), "--repo", "org/name"]) == 2
    assert "not a finished run" in capsys.readouterr().err


# ------------------------------------------------------------------ okd eval follows the run

def test_eval_takes_the_runs_template_and_prompt_length(okd_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "e.json"
    args = ["eval", "--model", str(okd_run), "--data", str(tiny_data), "--limit", "2", "--seeds", "1",
            "--max-new-tokens", "4", "-o", str(out)]
    assert main(args) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["template"], settings["max_prompt_length"]) == ("chat", 40)
    err = capsys.readouterr().err
    assert "template chat, max-prompt-length 40 from its config.yaml" in err
    assert main(args[:2] + [str(okd_run / "student")] + args[3:] + ["--template", "alpaca"]) == 0
    assert json.loads(out.read_text())["settings"]["template"] == "alpaca"
    assert "trained with data.template=chat; evaluating with template=alpaca as asked" in capsys.readouterr().err


def test_eval_output_is_checked_before_anything_loads(tmp_path, monkeypatch, capsys):
    import okd.eval.runner as runner

    monkeypatch.setattr(runner, "run_eval", lambda *a, **k: pytest.fail("generated before checking -o"))
    assert main(["eval", "--model", "/nonexistent", "--data", "x", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root writes anywhere)
            assert main(["eval", "--model", "/nonexistent", "--data", "x", "-o", str(ro / "r.json")]) == 2
            assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ the model's context

@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    from okd.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("gpt2") / "m", "gpt2", layers=1, hidden=32, max_positions=64)


def test_prompts_are_cut_to_fit_the_context(short_gpt2, tiny_data, tmp_path, capsys):
    """GPT-2 with 64 positions, 40 new tokens: prompts of ~80 byte tokens are cut to 24, with a warning
    (no IndexError from the position embeddings)."""
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(short_gpt2), "--data", str(tiny_data), "--limit", "2", "--seeds", "1",
                 "--max-new-tokens", "40", "-o", str(out)]) == 0
    assert "prompts cut to their last 24 tokens: the model's context is 64 tokens" in capsys.readouterr().err
    assert main(["eval", "--model", str(short_gpt2), "--data", str(tiny_data), "--limit", "2", "--seeds", "1",
                 "--max-new-tokens", "64", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("okd: error: max_new_tokens 64 leaves no room for a prompt in the model's context of 64 tokens; "
                   "use at most 63")


def test_fit_prompts_keeps_bos():
    from okd.eval.follow import fit_prompts

    logged = []
    assert fit_prompts([[1, 5, 6, 7, 8], [1, 2]], 5, 2, bos=1, log=logged.append) == [[1, 7, 8], [1, 2]]
    assert len(logged) == 1 and fit_prompts([[3, 4]], None, 10**6) == [[3, 4]]


# ------------------------------------------------------------------ file modes

def test_weights_follow_the_umask(tiny_dirs, tmp_path, capsys):
    """safetensors writes 0600 (a private temporary file); okd gives what it writes the umask's modes."""
    old = os.umask(0o022)
    try:
        assert main(["student", "init", "--from", str(tiny_dirs["teacher"]), "--layers", "2",
                     "-o", str(tmp_path / "s")]) == 0
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "s" / "model.safetensors").stat().st_mode)
    assert mode == 0o644, oct(mode)
    assert main(["student", "init", "--from", str(tiny_dirs["teacher"]), "--layers", "1",
                 "-o", str(tmp_path / "s" / "model.safetensors")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
