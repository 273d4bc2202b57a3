"""YAML as compresskit reads it: UTF-8, no key given twice, no deeper than a recipe needs.

PyYAML alone keeps the last of two equal keys (a typo silently wins), decodes whatever it is
given and recurses as deep as the input goes. Every problem here is a RecipeError with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compresskit.errors import RecipeError

MAX_DEPTH = 32  # a recipe is a few levels deep; deeper input is rejected before Python recursion fails


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is a problem, not 'last wins'."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[str, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                self.duplicates.append((f"line {line}", f"key {key!r} is given twice in one mapping (first on "
                                                        f"line {seen[key]}); keep one"))
            elif isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """YAML text to Python data; a duplicate key or nesting deeper than a recipe needs is a RecipeError."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters here already
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError([(where, f"not valid YAML: {getattr(err, 'problem', None) or err}")], source) from None
    except RecursionError:
        raise RecipeError([("", f"nested too deeply to parse (a recipe needs at most {MAX_DEPTH} levels)")],
                          source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise RecipeError(loader.duplicates, source)
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise RecipeError([("", f"nested {depth} levels deep; a recipe needs at most {MAX_DEPTH}")], source)
    return data


def _depth(data: Any) -> int:
    """How deeply lists and mappings nest (iteratively: the input may be deeper than Python's stack)."""
    deepest, todo = 0, [(data, 0)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        todo += [(child, depth + 1) for child in children]
    return deepest


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RecipeError([("", f"recipe file {path} does not exist")], str(path))
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError([("", "the file is UTF-16 text; save the recipe as UTF-8")], str(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecipeError([("", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); a recipe "
                                "is a UTF-8 YAML file")], str(path)) from None
    return parse_yaml(text, str(path))


