"""`train.trackers: [tensorboard]` (the `tracking` extra): events are written under the run directory and
read back with tensorboard's own event reader; and the plain progress lines for logs that are not a TTY."""

from __future__ import annotations

import io

import pytest

from okd.config import build_config
from okd.progress import LineProgress, progress_bar


def test_tensorboard_events_are_written_and_readable(base_overrides, tmp_path):
    _tensorboard_run(base_overrides, tmp_path)


def _tensorboard_run(base_overrides, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -e '.[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from okd.train import train

    out = train(build_config({}, base_overrides + ["method.name=sft", "train.max_steps=3", "train.trackers=[tensorboard]",
                                                   f"output_dir={tmp_path / 'tb'}"]), progress=False)
    events = sorted((out / "okd").glob("events.out.tfevents.*"))  # <output_dir>/okd/ (hparams in a subfolder)
    assert events, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    acc = EventAccumulator(str(out / "okd"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "lr", "valid_loss"} <= set(tags), tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert acc.Scalars("valid_loss")[-1].step == 3


def test_line_progress_prints_every_n_steps_with_the_latest_postfix():
    buf = io.StringIO()
    bar = LineProgress(10, desc="okd train [sft]", every=4, stream=buf)
    for step in range(1, 11):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / step:.2f}")
    bar.close()
    lines = buf.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["okd train [sft] step 4/10 (40%) loss=0.25",
                                                         "okd train [sft] step 8/10 (80%) loss=0.12",
                                                         "okd train [sft] step 10/10 (100%) loss=0.10"]
    assert "\r" not in buf.getvalue() and "left" in lines[0] and "left" not in lines[-1]


def test_line_progress_resumes_mid_run_and_can_be_silenced():
    buf = io.StringIO()
    with LineProgress(100, initial=50, stream=buf) as bar:  # every: a twentieth of what is left (2 steps)
        bar.update(1)
        bar.update(1)
    assert buf.getvalue().startswith("step 52/100 (52%)")
    quiet = io.StringIO()
    with LineProgress(5, stream=quiet, disable=True) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def test_progress_bar_is_tqdm_on_a_terminal_only():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(5, stream=io.StringIO()), LineProgress)
    bar = progress_bar(5, stream=Tty(), desc="x")
    assert not isinstance(bar, LineProgress) and hasattr(bar, "set_postfix")
    bar.close()
