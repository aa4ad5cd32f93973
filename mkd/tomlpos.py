"""Line numbers for TOML key paths, so a validation error can say where in the file it is.

tomllib stays the parser of record; tree-sitter-toml is used only to find where each key
path starts. A pydantic error location such as ("stages", 1, "num_envs") maps to the
longest prefix present in the file (a missing key points at its table).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Sequence
from functools import cache

import tree_sitter_toml
from tree_sitter import Language, Node, Parser

Loc = tuple[str | int, ...]


@cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_toml.language()))


def _key_parts(node: Node) -> list[str]:
    text = (node.text or b"").decode("utf-8", "replace")
    if node.type == "dotted_key":
        return [part for child in node.named_children for part in _key_parts(child)]
    if node.type == "quoted_key":
        try:
            return [next(iter(tomllib.loads(text + " = 0")))]
        except (tomllib.TOMLDecodeError, StopIteration):
            return [text.strip("\"'")]
    return [text]


def _value_node(pair: Node) -> Node | None:
    named = pair.named_children
    return named[-1] if len(named) >= 2 else None


class KeyIndex:
    """Every key path of one TOML document with its 1-based (line, column)."""

    def __init__(self, source: str) -> None:
        self.positions: dict[Loc, tuple[int, int]] = {}
        self._array_tables: dict[Loc, int] = {}
        tree = _parser().parse(source.encode("utf-8"))
        for node in tree.root_node.named_children:
            self._top(node)

    def _mark(self, loc: Loc, node: Node) -> None:
        self.positions.setdefault(loc, (node.start_point[0] + 1, node.start_point[1] + 1))

    def _top(self, node: Node) -> None:
        if node.type == "pair":
            self._pair((), node)
        elif node.type in ("table", "table_array_element"):
            header = next((c for c in node.named_children if c.type.endswith("key")), None)
            if header is None:
                return
            loc = self._header_loc(_key_parts(header))
            for end in range(1, len(loc)):  # [a.b] makes table a too: give it this line if it has none
                self._mark(loc[:end], node)
            if node.type == "table_array_element":
                index = self._array_tables.get(loc, 0)
                self._array_tables[loc] = index + 1
                self._mark(loc, node)
                loc = (*loc, index)
            self._mark(loc, node)
            for child in node.named_children:
                if child.type == "pair":
                    self._pair(loc, child)

    def _header_loc(self, parts: list[str]) -> Loc:
        """A header's key path, with the current element of any array of tables it passes through:
        [stages.points] after the second [[stages]] is ("stages", 1, "points")."""
        loc: Loc = ()
        for part in parts[:-1]:
            loc = (*loc, part)
            count = self._array_tables.get(loc)
            if count:
                loc = (*loc, count - 1)
        return (*loc, parts[-1]) if parts else loc

    def _pair(self, prefix: Loc, pair: Node) -> None:
        key = pair.named_children[0] if pair.named_children else None
        if key is None:
            return
        parts = _key_parts(key)
        for i in range(1, len(parts) + 1):
            self._mark((*prefix, *parts[:i]), pair)
        value = _value_node(pair)
        if value is not None:
            self._value((*prefix, *parts), value)

    def _value(self, loc: Loc, node: Node) -> None:
        if node.type == "inline_table":
            for child in node.named_children:
                if child.type == "pair":
                    self._pair(loc, child)
        elif node.type == "array":
            for index, item in enumerate(node.named_children):
                if item.type == "comment":
                    continue
                self._mark((*loc, index), item)
                self._value((*loc, index), item)

    def locate(self, loc: Sequence[str | int]) -> tuple[int, int] | None:
        """Position of the longest prefix of `loc` present in the file."""
        for end in range(len(loc), 0, -1):
            found = self.positions.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None

    def keys(self) -> Iterator[Loc]:
        return iter(self.positions)
