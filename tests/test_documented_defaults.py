"""The defaults docs/results.md documents (and says why) are the defaults the code has."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from okd.config import Config, get_dotted

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def documented() -> dict:
    """The `| key | default | ... |` rows of the doc's "Defaults" table."""
    text = DOC.read_text()
    section = text[text.index("## Defaults"):]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        m = re.match(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", line)
        if m:
            rows[m.group(1)] = yaml.safe_load(m.group(2))
    return rows


def test_documented_defaults_are_the_code_defaults():
    rows = documented()
    assert {"online.alpha", "online.lr", "online.rank", "online.lora_alpha", "online.layers",
            "method.temperature"} <= set(rows), sorted(rows)
    cfg = Config()
    assert {k: get_dotted(cfg, k) for k in rows} == rows
