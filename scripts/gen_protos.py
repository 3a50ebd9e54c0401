"""Generate the Python code for every .proto under protos/ into an output folder.

The vendored protos/google/ files are only read as imports: their Python code
comes from the googleapis-common-protos package.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: gen)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# Vendored imports whose Python code comes from a package (googleapis-common-protos).
VENDORED = ("google",)


def generate(out_dir: Path) -> None:
    """Run protoc for every proto file but the vendored ones; add the package __init__ files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(
        str(p.relative_to(PROTOS))
        for p in PROTOS.rglob("*.proto")
        if p.relative_to(PROTOS).parts[0] not in VENDORED
    )
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for folder in {(out_dir / f).parent for f in files}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gen")
