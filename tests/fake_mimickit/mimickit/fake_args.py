"""MimicKit's argument syntax, written from its documented behaviour (mimickit.md §1, seen).

`--key v1 v2 ...`: any token starting with `--` (3+ characters) starts a key, the tokens up to
the next key are its values; tokens starting with `#` are comments. Every key is accepted
(typos are silently ignored), the first occurrence of a key wins, and the command line is
loaded before `--arg_file`, so the command line overrides the file.
"""

from __future__ import annotations

TRUE_WORDS = ("true", "True", "1", "T", "t")


class ArgTable:
    """Parsed `--key values` pairs; the parse_* methods fail the way MimicKit's do."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}

    def load_tokens(self, tokens: list[str]) -> None:
        key: str | None = None
        values: list[str] = []
        for token in tokens:
            if token.startswith("#"):
                continue
            if len(token) >= 3 and token.startswith("--"):
                self._store(key, values)
                key, values = token[2:], []
            else:
                values.append(token)
        self._store(key, values)

    def load_file(self, path: str) -> None:
        """Raises FileNotFoundError for a missing file, as the real one does."""
        with open(path) as handle:
            text = handle.read()
        tokens: list[str] = []
        for line in text.splitlines():
            if not line.strip().startswith("#"):
                tokens += line.split()
        self.load_tokens(tokens)

    def _store(self, key: str | None, values: list[str]) -> None:
        if key is not None and key not in self.table:  # first occurrence wins
            self.table[key] = values

    def has(self, key: str) -> bool:
        return key in self.table

    def parse_str(self, key: str, default: str) -> str:
        values = self.table.get(key)
        return values[0] if values else default

    def parse_strs(self, key: str, default: list[str]) -> list[str]:
        return list(self.table.get(key) or default)

    def parse_int(self, key: str, default: int) -> int:
        """`--num_envs four` -> ValueError: invalid literal for int() with base 10: 'four'."""
        return int(self.table[key][0]) if key in self.table else default

    def parse_bool(self, key: str, default: bool) -> bool:
        """A bare `--visualize` -> IndexError: list index out of range."""
        return self.table[key][0] in TRUE_WORDS if key in self.table else default


def load_args(argv: list[str]) -> ArgTable:
    args = ArgTable()
    args.load_tokens(argv)
    arg_file = args.parse_str("arg_file", "")
    if arg_file:
        args.load_file(arg_file)
    return args
