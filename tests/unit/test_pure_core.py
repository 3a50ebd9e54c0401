"""The pure core never imports an I/O library and never reads the environment (STYLE.md 1, 4).

The check reads each module's source with ``ast``, so nested imports (inside a function
or a ``TYPE_CHECKING`` block) count too, and nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PURE_MODULES = (
    "gateway.translate",
    "gateway.protojson",
    "gateway.reload_plan",
    "gateway.auth",
    "gateway.ratelimit",
    "gateway.routing",
    "gateway.config",
    "gateway.errors",
    "gateway.grpc.descriptors",
    "gateway.delivery",
    "gateway.backoff",
    "gateway.breaker",
    "gateway.retrybudget",
    "gateway.health_state",
    "gateway.http.sse",
    "gateway.transcode",
    "gateway.transcode.fields",
    "gateway.transcode.openapi",
    "gateway.transcode.request",
    "gateway.transcode.response",
    "gateway.transcode.rules",
    "gateway.transcode.stream",
    "gateway.transcode.table",
    "gateway.transcode.template",
    "gateway.origins",
    "gateway.transcode.cors",
    "gateway.transcode.metadata",
    "gateway.client.frames",
    "gateway.idempotency",
    "gateway.discovery",
    "gateway.store",
    "gateway.store.records",
    "gateway.store.rules",
    "gateway.tickets",
    "gateway.worker_restarts",
    "adapters.config",
    "adapters.dedup",
    "adapters.envelope",
    "adapters.chat.echo",
    "adapters.chat.openai_wire",
    "adapters.tasks.commands",
)

FORBIDDEN = frozenset(
    {
        "asyncio",
        "grpc",
        "websockets",
        "socket",
        "ssl",
        "starlette",
        "uvicorn",
        "httpx",
        "aiohttp",
        "grpc_health",
        "grpc_reflection",
        "sqlite3",
        "subprocess",
        "threading",
        "concurrent",
    }
)


def _source_path(module: str) -> Path:
    path = ROOT / module.replace(".", "/")
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of what a ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".")[: -node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_modules(module: str, tree: ast.AST) -> set[str]:
    """Every module an import statement in ``tree`` names (``from X import y`` gives X and X.y)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def forbidden_imports(module: str, tree: ast.AST) -> set[str]:
    return {name for name in imported_modules(module, tree) if name.split(".")[0] in FORBIDDEN}


def environment_reads(tree: ast.AST) -> list[str]:
    """``os.environ``, ``os.getenv`` and ``from os import environ/getenv``, with line numbers."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "environb", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            found.append(f"line {node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ("environ", "environb", "getenv"):
                    found.append(f"line {node.lineno}: from os import {alias.name}")
    return found


def _tree(module: str) -> ast.AST:
    path = _source_path(module)
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    bad = forbidden_imports(module, _tree(module))
    assert not bad, f"{module} imports I/O libraries: {sorted(bad)}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_does_not_read_the_environment(module: str) -> None:
    reads = environment_reads(_tree(module))
    assert not reads, f"{module} reads the environment: {reads}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_only_pure_gateway_modules(module: str) -> None:
    """Purity is transitive inside the project: a pure module may not pull in the shell."""
    allowed = set(PURE_MODULES) | {"gateway", "gateway.http", "adapters", "adapters.chat"}
    project = {
        name
        for name in imported_modules(module, _tree(module))
        if name.split(".")[0] in ("gateway", "adapters") and _is_module(name)
    }
    assert project <= allowed, f"{module} imports shell modules: {sorted(project - allowed)}"


def _is_module(name: str) -> bool:
    """True when ``name`` is a module or package (not a name imported from one)."""
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_package_inits_on_the_way_are_pure() -> None:
    """Importing gateway.http.sse runs gateway/http/__init__.py: it must be pure as well."""
    for init in ("gateway", "gateway.http"):
        path = ROOT / init.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        assert not forbidden_imports(init + ".__init__", tree), init
        assert not environment_reads(tree), init


# The checker itself: each sample must be caught (so the tests above can fail).
VIOLATIONS = [
    ("import asyncio", "gateway.x", {"asyncio"}),
    ("import asyncio.subprocess as sp", "gateway.x", {"asyncio.subprocess"}),
    ("from grpc import aio", "gateway.x", {"grpc", "grpc.aio"}),
    ("from grpc.aio import Channel", "gateway.x", {"grpc.aio", "grpc.aio.Channel"}),
    ("def f():\n    import socket\n", "gateway.x", {"socket"}),
    ("if TYPE_CHECKING:\n    import ssl\n", "gateway.x", {"ssl"}),
    (
        "class C:\n    def m(self):\n        from websockets.asyncio.client import connect\n",
        "gateway.x",
        {"websockets.asyncio.client", "websockets.asyncio.client.connect"},
    ),
    ("import json, httpx", "gateway.x", {"httpx"}),
    ("import importlib\nimportlib.import_module('uvicorn')", "gateway.x", {"uvicorn"}),
    (
        "from starlette.requests import Request",
        "gateway.x",
        {"starlette.requests", "starlette.requests.Request"},
    ),
    ("import aiohttp", "gateway.x", {"aiohttp"}),
]


@pytest.mark.parametrize(("source", "module", "expected"), VIOLATIONS)
def test_checker_catches_imports(source: str, module: str, expected: set[str]) -> None:
    assert forbidden_imports(module, ast.parse(source)) == expected


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio_extras",
        "import grpcio_tools_like",
        "from . import sockets",
        "import json\nimport dataclasses",
        "from gateway.errors import InvalidMessage",
    ],
)
def test_checker_allows_lookalikes(source: str) -> None:
    assert forbidden_imports("gateway.x", ast.parse(source)) == set()


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ("import os\nx = os.environ['PORT']", 1),
        ("import os\nx = os.environ.get('PORT')", 1),
        ("import os\nx = os.getenv('PORT')", 1),
        ("from os import environ", 1),
        ("def f():\n    import os\n    return dict(os.environ)", 1),
        ("env = {'environ': 1}\nimport os\npath = os.path.join('a', 'b')", 0),
    ],
)
def test_checker_catches_environment_reads(source: str, count: int) -> None:
    assert len(environment_reads(ast.parse(source))) == count


def test_relative_imports_are_resolved() -> None:
    tree = ast.parse("from ..errors import InvalidMessage\nfrom . import sse")
    assert imported_modules("gateway.http.body", tree) == {
        "gateway.errors",
        "gateway.errors.InvalidMessage",
        "gateway.http",
        "gateway.http.sse",
    }


def test_every_pure_module_exists() -> None:
    for module in PURE_MODULES:
        assert _source_path(module).is_file(), module
