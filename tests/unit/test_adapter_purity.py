"""The adapters' pure core imports no I/O library and never reads the
environment (STYLE.md 1 and 4). Checked on the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PURE_MODULES = (
    "adapters/config.py",
    "adapters/dedup.py",
    "adapters/envelope.py",
    "adapters/chat/echo.py",
    "adapters/chat/openai_wire.py",
    "adapters/tasks/commands.py",
)
FORBIDDEN = frozenset({
    "asyncio", "grpc", "grpc_health", "grpc_reflection", "socket", "ssl", "httpx", "sqlite3",
    "threading", "concurrent", "subprocess", "websockets", "starlette", "uvicorn", "os",
})


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", PURE_MODULES)
def test_pure_module_imports_no_io(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(), path)
    assert imported_roots(tree) & FORBIDDEN == set()
    assert "environ" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


def test_the_check_catches_an_io_import() -> None:
    tree = ast.parse("def f():\n    import asyncio.tasks\nfrom grpc import aio\n")
    assert imported_roots(tree) & FORBIDDEN == {"asyncio", "grpc"}
