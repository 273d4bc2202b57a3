"""The docs show the shipped code: every Python block of adding-a-strategy.md that names a real class
is that class's code, character for character."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
SHIPPED = {"MaxProbabilityRule": "compresskit/modeling/dynamic.py",
           "MaxProbStrategy": "compresskit/strategies/maxprob.py"}


def test_the_worked_example_is_the_shipped_code():
    page = (ROOT / "docs" / "adding-a-strategy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    checked = set()
    for block in blocks:
        for name, path in SHIPPED.items():
            if f"class {name}(" in block:
                assert block.strip() in (ROOT / path).read_text(), f"docs/adding-a-strategy.md's {name} != {path}"
                checked.add(name)
    assert checked == set(SHIPPED)
