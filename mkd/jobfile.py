"""Reading a job (or config) file into a model, with every problem located by line.

A person fixing a job file needs all of its problems at once, each with the line, the key
path, what was wrong and what is allowed; pydantic gives key paths, `tomlpos` turns them
into lines, and this module words the hints (did-you-mean for unknown keys).
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mkd.spec import JobSpec
from mkd.tomlpos import KeyIndex, Loc

MAX_DEPTH = 16
M = TypeVar("M", bound=BaseModel)
_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_UNION_TAGS = {"mimickit", "command"}


@dataclass(frozen=True)
class Problem:
    line: int | None
    column: int | None
    path: str
    message: str

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}:{self.column}" if self.line is not None else filename
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class JobFileError(Exception):
    """A file that cannot become a job; `problems` lists every reason."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [p.render(self.filename) for p in self.problems]
        return "\n".join(lines) + "\n"


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_toml(text: str, filename: str) -> dict[str, Any]:
    """tomllib with its error position turned into a Problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = _TOML_POS.search(str(error))
        line, col = (int(match.group(1)), int(match.group(2))) if match else (None, None)
        message = _TOML_POS.sub("", str(error)).strip()
        raise JobFileError(filename, [Problem(line, col, "", f"not valid TOML: {message}")]) from None
    except RecursionError:
        raise JobFileError(filename, [Problem(None, None, "", "nested too deeply to read")]) from None
    if _depth(data) > MAX_DEPTH:
        raise JobFileError(filename, [Problem(None, None, "", f"nested deeper than {MAX_DEPTH} levels")])
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models reachable from a field annotation (through list, dict, Optional, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (list, typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if origin is dict:
        return _models_in(typing.get_args(annotation)[1])
    return []


def allowed_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """Keys a table at `loc` may hold (its model's fields, by their TOML names)."""
    models: list[type[BaseModel]] = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in models:
            tagged = [m for m in models if part in _UNION_TAGS and _kind_of(m) == part]
            if tagged:
                nxt = tagged
                break
            for name, field in model.model_fields.items():
                if part in (name, field.alias):
                    nxt.extend(_models_in(field.annotation))
        models = nxt or models
    keys: list[str] = []
    for model in models:
        keys.extend(field.alias or name for name, field in model.model_fields.items())
    return sorted(set(keys))


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return str(args[0]) if len(args) == 1 else None


def _display_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop the union tag pydantic inserts (workload.mimickit.num_envs -> workload.num_envs)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i > 0 and out and out[-1] == "workload" and part in _UNION_TAGS:
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        out.append(part if isinstance(part, int) else str(part))
    return tuple(out)


def _message(root: type[BaseModel], error: Any) -> str:
    kind = error["type"]
    raw_loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if kind == "extra_forbidden":
        key = str(raw_loc[-1])
        allowed = allowed_keys(root, raw_loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown key {key!r}.{hint} Allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing; add it"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if (
        kind not in ("value_error", "assertion_error")
        and "input" in error
        and not isinstance(error["input"], dict | list)
    ):
        message += f" (got {error['input']!r})"
    return message


def validate_data(model: type[M], data: dict[str, Any], text: str, filename: str) -> M:
    """Validate parsed TOML against `model`; every error becomes a located Problem."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        index = KeyIndex(text)
        problems: list[Problem] = []
        for item in error.errors():
            loc = _display_loc(tuple(item["loc"]))
            position = index.locate(loc)
            line, col = position if position else (None, None)
            path = ".".join(str(p) for p in loc)
            problems.append(Problem(line, col, path, _message(model, item)))
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise JobFileError(filename, problems) from None


def load_text(model: type[M], text: str, filename: str) -> M:
    return validate_data(model, parse_toml(text, filename), text, filename)


def decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise JobFileError(filename, [Problem(line, None, "", "not UTF-8 text; save the file as UTF-8")]) from None


def load_job_bytes(raw: bytes, filename: str) -> JobSpec:
    return load_text(JobSpec, decode(raw, filename), filename)


def load_job_file(path: Path) -> JobSpec:
    return load_job_bytes(path.read_bytes(), path.name)
