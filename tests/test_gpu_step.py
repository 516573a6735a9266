"""The training step's host-side economy (issue: a GPU step that scales): what it may skip must not
change a number. Hidden states without output_hidden_states and without the padding mask (right
padding) equal the reference; scored rows chosen by CPU-computed indices equal the boolean mask's;
the step's device reads are counted and pinned."""

from __future__ import annotations

import pytest
import torch

from okd.config import OnlineConfig
from okd.methods.base import Scored, scored_index
from okd.models.loading import final_hidden
from okd.models.online import add_online_module
from okd.models.tiny import tiny_model


def _right_padded(vocab=260, lengths=(9, 5, 12), pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_final_hidden_without_mask_equals_hidden_states_with_mask(arch):
    model = tiny_model(arch).eval()
    ids, mask = _right_padded()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        got = final_hidden(model, ids, None)
        got_masked = final_hidden(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_masked[real], ref[real], rtol=1e-5, atol=1e-5)


def test_final_hidden_through_the_online_module():
    teacher = add_online_module(tiny_model("llama"), OnlineConfig(rank=4, lora_alpha=4))
    for p in teacher.parameters():  # move the adapter off zero so it matters
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids, mask = _right_padded()
    with torch.no_grad():
        ref = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        got = final_hidden(teacher, ids, None)
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)


def test_scored_rows_from_cpu_indices_equal_the_boolean_mask():
    labels = torch.tensor([[-100, -100, 5, 6, 7, -100], [-100, 4, 4, -100, -100, -100], [-100] * 6])
    hidden = torch.randn(3, 6, 4)
    mask = labels[:, 1:] != -100
    s = Scored.from_labels(labels, scored_index(labels))
    torch.testing.assert_close(s.select(hidden), hidden[:, :-1][mask])
    assert torch.equal(s.targets, labels[:, 1:][mask])
    assert torch.equal(Scored.from_labels(labels).index, s.index)  # computed on the fly: the same


@pytest.mark.slow
def test_compiled_step_equals_eager(base_overrides, tmp_path):
    """train.compile=default (inductor on CPU here): the same losses as the eager run, to tolerance."""
    import json

    from okd.config import build_config
    from okd.train import train

    common = base_overrides + ["method.name=okd", "train.max_steps=2", "data.group_by_length=false"]

    def losses(name, mode):
        out = train(build_config({}, [o for o in common if not o.startswith("output_dir=")]
                                 + [f"train.compile={mode}", f"output_dir={tmp_path / name}"]), progress=False)
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert losses("compiled", "default") == pytest.approx(losses("eager", "off"), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("method,forwards", [("sft", 1), ("fkd", 2), ("okd", 2)])
def test_device_reads_per_training_step_are_pinned(method, forwards, base_overrides):
    """Counted by benchmarks/count_ops.py on CPU (where value reads and data-dependent shapes count on CPU
    tensors too). Per step: the scored positions' `nonzero` and the token count's read, both on the CPU
    batch before it is copied (free on a GPU); one read per model forward inside transformers' masking
    (eager only: skipped when compiled); one read for the non-finite guard, which decides whether the
    optimizers step. Nothing else: losses and gradient norms stay on the device until a logging step."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from count_ops import count_step

    from okd.config import build_config
    from okd.train.setup import setup
    from okd.train.trainer import non_finite, train_step

    run = setup(build_config({}, base_overrides + [f"method.name={method}"]), resume=False, progress=False)
    train_step(run)  # first step: lazy initialisations

    def step():
        totals, norms, _, _ = train_step(run)
        non_finite(run, totals, norms)
        for o in run.optimizers.values():
            o.zero_grad(set_to_none=True)

    counts = count_step(step)
    assert counts["by_sync"] == {"aten.nonzero": 1, "aten._local_scalar_dense": 2 + forwards}, counts["by_sync"]
