"""gen/ is exactly what scripts/gen_protos.py produces from protos/ (STYLE.md 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "gen"
GENERATOR = ROOT / "scripts" / "gen_protos.py"
STALE = "gen/ is out of date: run make gen"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_protos_under_test", GENERATOR)
    assert spec is not None and spec.loader is not None, f"cannot load {GENERATOR}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    }


def _differences(fresh: dict[str, bytes], committed: dict[str, bytes]) -> str:
    """An empty string when both trees are identical, else what differs."""
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    changed = sorted(name for name in set(fresh) & set(committed) if fresh[name] != committed[name])
    if not (missing or extra or changed):
        return ""
    return f"missing: {missing}; extra: {extra}; changed: {changed}"


def test_gen_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh_dir = tmp_path / "gen"
    _load_generator().generate(fresh_dir)
    fresh = _files(fresh_dir)
    assert fresh, "the generator produced nothing"
    differences = _differences(fresh, _files(GEN))
    assert not differences, f"{STALE} ({differences})"


def test_file_listing_ignores_pycache(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / "m.py").write_bytes(b"x = 1\n")
    assert _files(tmp_path) == {"pkg/m.py": b"x = 1\n"}


def test_differences_are_detected() -> None:
    base = {"a.py": b"1", "b.py": b"2"}
    assert _differences(base, dict(base)) == ""
    assert "missing: ['b.py']" in _differences(base, {"a.py": b"1"})
    assert "extra: ['c.py']" in _differences(base, {**base, "c.py": b"3"})
    assert "changed: ['a.py']" in _differences(base, {**base, "a.py": b"1 "})


def test_openapi_document_is_up_to_date() -> None:
    script = ROOT / "scripts" / "gen_openapi.py"
    spec = importlib.util.spec_from_file_location("gen_openapi", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "openapi.yaml").read_text()
    assert current == module.render(), "docs/openapi.yaml is out of date: run make gen"
