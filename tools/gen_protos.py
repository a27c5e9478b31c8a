"""Regenerate pilotfish's own protobuf modules from the .proto files under src/pilotfish/protos/.

Usage:
    python tools/gen_protos.py            # regenerate *_pb2.py and *_pb2.pyi under src/
    python tools/gen_protos.py --check    # exit 1, listing stale, missing or orphaned files
    python tools/gen_protos.py --out DIR  # write (or, with --check, compare) under DIR

Every .proto is compiled in one protoc run (grpcio-tools) with `-I src` plus grpcio-tools'
bundled include directory (google/protobuf well-known types), so imports read
`pilotfish/protos/...` and the modules live under `pilotfish.protos...`. Inputs are sorted; the
output depends only on the .proto files and the grpcio-tools version. protoc's .pyi stubs are not
mypy-strict clean, so each gets a `# mypy: ignore-errors` first line (its types are still used).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PROTO_PACKAGE", "SRC", "check", "find_protos", "generate", "main"]

SRC = Path(__file__).resolve().parent.parent / "src"
PROTO_PACKAGE = Path("pilotfish") / "protos"
_SUFFIXES = ("_pb2.py", "_pb2.pyi")
_PYI_HEADER = "# mypy: ignore-errors\n"


def find_protos(src: Path = SRC) -> list[Path]:
    """Every .proto under src/pilotfish/protos/, relative to src, sorted."""
    return sorted(p.relative_to(src) for p in (src / PROTO_PACKAGE).rglob("*.proto"))


def _outputs(protos: Sequence[Path]) -> list[Path]:
    return sorted(p.with_name(p.stem + suffix) for p in protos for suffix in _SUFFIXES)


def generate(out_root: Path = SRC, src: Path = SRC) -> list[Path]:
    """Compile every .proto under src into out_root; return the generated files (relative)."""
    protos = find_protos(src)
    if not protos:
        return []
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        *(p.as_posix() for p in protos),
    ]
    subprocess.run(command, cwd=src, check=True)
    outputs = _outputs(protos)
    for rel in outputs:
        if rel.suffix == ".pyi":
            stub = out_root / rel
            stub.write_text(_PYI_HEADER + stub.read_text(encoding="utf-8"), encoding="utf-8")
    return outputs


def check(out_root: Path = SRC, src: Path = SRC) -> list[str]:
    """Problems with the checked-in generated code under out_root; empty when it is up to date."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        expected = generate(fresh, src)
        for rel in expected:
            current = out_root / rel
            if not current.is_file():
                problems.append(f"missing: {rel.as_posix()}")
            elif not filecmp.cmp(fresh / rel, current, shallow=False):
                problems.append(f"out of date: {rel.as_posix()}")
    wanted = set(expected)
    for suffix in _SUFFIXES:
        for path in sorted((out_root / PROTO_PACKAGE).rglob("*" + suffix)):
            rel = path.relative_to(out_root)
            if rel not in wanted:
                problems.append(f"no .proto for: {rel.as_posix()}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=SRC, help="output root (default: src)")
    args = parser.parse_args(argv)
    out_root: Path = args.out.resolve()
    if args.check:
        problems = check(out_root)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python tools/gen_protos.py", file=sys.stderr)
            return 1
        return 0
    for rel in generate(out_root):
        print(rel.as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
