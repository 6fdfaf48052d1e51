"""Regenerate the Python code for protos/turnout/v1/*.proto.

Usage: python scripts/gen_protos.py [--check]

The generated modules live beside the .proto files and are importable as
``turnout.v1`` (pyproject maps that package to protos/turnout/v1). With
``--check`` nothing is written; the exit status is 1 when the committed code
differs from what the protos generate (CI runs this).
"""

from __future__ import annotations

import filecmp
import importlib.resources
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = PROTO_ROOT / "turnout" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")


def generated_files(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in directory.iterdir() if p.name.endswith(SUFFIXES)}


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp) / "turnout" / "v1")
        committed = generated_files(PACKAGE_DIR)
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if name not in fresh
            or name not in committed
            or not filecmp.cmp(fresh[name], committed[name], shallow=False)
        )
        if check:
            if stale:
                print("generated protobuf code is stale:", ", ".join(stale))
                print("run: python scripts/gen_protos.py")
                return 1
            print("generated protobuf code is fresh")
            return 0
        for name in committed.keys() - fresh.keys():
            committed[name].unlink()
        for name, path in fresh.items():
            (PACKAGE_DIR / name).write_bytes(path.read_bytes())
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
