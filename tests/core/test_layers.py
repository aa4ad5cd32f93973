"""The package's layers, from its imports: client commands never load the daemon's pipeline,
the pure core does no I/O of its own, and MimicKit's knowledge stays under mkd/mimickit/."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mkd"
PIPELINE = {
    "mkd.daemon",
    "mkd.attempts",
    "mkd.launcher",
    "mkd.publisher",
    "mkd.runs",
    "mkd.gpu_ledger",
    "mkd.book",
    "mkd.intake",
    "mkd.executors.local",
    "mkd.executors.slurm",
}
# The pure core: decisions only. What it may import from mkd besides itself.
PURE = ("mkd.verdict", "mkd.lifecycle", "mkd.policy", "mkd.stages", "mkd.livecheck", "mkd.memory", "mkd.scheduler")
PURE_MAY_USE = {
    "mkd.exits",
    "mkd.stagekinds",
    "mkd.failures",
    "mkd.states",
    "mkd.spec",
    "mkd.quantities",
    "mkd.memory",
    "mkd.mimickit",
    "mkd.gpus",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


@cache
def imports(name: str) -> frozenset[str]:
    """The mkd modules `name` imports, at module level or inside functions (lazily)."""
    path = modules()[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    known = modules()
    return frozenset(m for m in found if m in known and m != name)


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("name", sorted(m for m in modules() if m.startswith("mkd.client")))
def test_client_commands_never_load_the_daemon_pipeline(name: str) -> None:
    assert not closure(name) & PIPELINE, f"{name} imports {sorted(closure(name) & PIPELINE)}"


@pytest.mark.parametrize("name", PURE)
def test_the_pure_core_imports_no_io_module(name: str) -> None:
    allowed = set(PURE) | PURE_MAY_USE
    bad = {m for m in imports(name) if not any(m == a or m.startswith(a + ".") for a in allowed)}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(m for m in modules() if m.startswith("mkd.mimickit")))
def test_mimickit_knowledge_depends_on_nothing_of_the_daemon(name: str) -> None:
    assert not closure(name) & (PIPELINE | {"mkd.store", "mkd.engine"}), name


def test_the_job_file_schema_and_the_stage_kinds_agree() -> None:
    from typing import get_args

    from mkd.spec import StageKind as Literal
    from mkd.stagekinds import StageKind

    assert set(get_args(Literal)) == {kind.value for kind in StageKind}
