"""Write constraints.txt: compresskit[test]'s dependency closure pinned to the installed versions.

Run after changing a dependency and checking that the suite passes; commit the result.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = {"compresskit": {"test"}, "optimum-onnx": {"onnxruntime"}}
SKIP = {"compresskit", "setuptools", "pip"}


def closure(root: str) -> dict[str, str]:
    pinned: dict[str, str] = {}
    stack = [root]
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in pinned:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        pinned[key] = dist.version.split("+")[0]  # torch 2.13.0+cpu is pinned as 2.13.0
        for line in dist.requires or []:
            req = Requirement(line)
            extras = EXTRAS.get(key, set())
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                stack.append(req.name)
    return {k: v for k, v in pinned.items() if k not in SKIP}


if __name__ == "__main__":
    lines = [f"{name}=={version}" for name, version in sorted(closure("compresskit").items())]
    header = "# Versions verified together (CPU, Python 3.11). Regenerate: python scripts/freeze_constraints.py\n"
    Path(__file__).parent.parent.joinpath("constraints.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"constraints.txt: {len(lines)} packages")
