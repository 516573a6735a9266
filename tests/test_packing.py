"""Packing several examples per row (okd.data.batching.pack_rows / collate_packed) and the
mega-batch size of length_grouped_order."""

import pytest
import torch

from okd.data import Collator, length_grouped_order
from okd.data.batching import collate_packed, pack_rows


def test_pack_rows_fits_and_covers():
    lengths = [(i * 37) % 101 + 3 for i in range(500)]
    rows = pack_rows(lengths, 128, seed=0)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert rows == pack_rows(lengths, 128, seed=0)
    # first-fit decreasing is near the bound total/capacity
    assert len(rows) <= 1.1 * sum(lengths) / 128 + 1
    assert pack_rows([300, 5], 128, 0) in ([[0], [1]], [[1], [0]])  # too long: a row of its own


def test_collate_packed_positions_and_labels():
    f1 = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    f2 = {"input_ids": [4, 5], "labels": [-100, 5]}
    f3 = {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9]}
    b = collate_packed([[f1, f2], [f3]], pad_token_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100, 5], [-100, -100, 8, 9, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    with pytest.raises(ValueError):
        collate_packed([[]], 0)


def test_packed_forward_equals_unpacked(tmp_path):
    """transformers builds a block-diagonal causal mask from position_ids resets (sdpa, no flash)."""
    from transformers import AutoModelForCausalLM

    from okd.methods.base import Scored
    from okd.models.tiny import save_tiny

    model = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "m", "llama", layers=2, hidden=64, seed=0)).eval()
    g = torch.Generator().manual_seed(0)
    feats = []
    for n in (7, 12, 5, 9, 3):
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100, -100] + ids[2:]})
    packed = collate_packed([feats[:3], feats[3:]], pad_token_id=0)
    plain = Collator(0)(feats)

    def hidden(batch, **kw):
        out = model(input_ids=batch["input_ids"], output_hidden_states=True, use_cache=False, **kw)
        return Scored.from_labels(batch["labels"]).select(out.hidden_states[-1])

    with torch.no_grad():
        hp = hidden(packed, position_ids=packed["position_ids"], attention_mask=None)
        hu = hidden(plain, attention_mask=plain["attention_mask"])
        wrong = hidden(packed, attention_mask=packed["attention_mask"])  # examples would see each other
    assert hp.shape == hu.shape
    torch.testing.assert_close(hp, hu, atol=1e-5, rtol=1e-4)
    assert (wrong - hu).abs().max() > 1e-3


def test_length_grouped_mega_batches():
    lengths = [(i * 37) % 101 for i in range(1003)]
    assert length_grouped_order(lengths, 4, 1) == length_grouped_order(lengths, 4, 1, mega_batches=50)

    def padding(o):
        return sum(max(lengths[i] for i in o[k:k + 4]) * len(o[k:k + 4]) - sum(lengths[i] for i in o[k:k + 4])
                   for k in range(0, len(o), 4))

    full = length_grouped_order(lengths, 4, 1, mega_batches=10**6)
    assert sorted(full) == list(range(len(lengths)))
    assert padding(full) <= padding(length_grouped_order(lengths, 4, 1)) < padding(
        length_grouped_order(lengths, 4, 1, mega_batches=1))
    with pytest.raises(ValueError):
        length_grouped_order(lengths, 4, 1, mega_batches=0)
