"""Generates the Python stubs for every contract under `protos/`.

One command (`scripts/gen-protos`, or `python -m launcher.protogen`), writing into the
contracts distribution (`contracts/`), so that everyone produces
byte-identical stubs with the pinned grpcio-tools; a test regenerates into a temporary folder
and fails when the committed stubs have drifted from `protos/`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
#: The contracts distribution: the stubs are written under contracts/syncmesh/<domain>/v1.
CONTRACTS = ROOT / "contracts"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write stubs for every .proto into out_dir (mirroring the package path); return them."""
    from grpc_tools import protoc  # dev dependency: only the generator and its drift test need it

    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the message above, fix the .proto file and run again")
    generated = [p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)]
    for stub in generated:
        _drop_empty_grpc_module(stub)
        # Every folder on the way gets an __init__.py so mypy and setuptools see real packages.
        folder = stub.parent
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def _drop_empty_grpc_module(stub: Path) -> None:
    """protoc writes a _pb2_grpc.py even for files without services; it would only be noise."""
    if stub.name.endswith("_pb2_grpc.py") and "Servicer" not in stub.read_text(encoding="utf-8"):
        stub.unlink()


def committed_stubs() -> list[Path]:
    return sorted(p for p in (CONTRACTS / "syncmesh").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    """Regenerate into a scratch folder, then replace the committed stubs with its contents."""
    for stale in committed_stubs():
        stale.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        written = generate(Path(scratch))
        for path in written:
            relative = path.relative_to(scratch)
            target = CONTRACTS / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            for folder in relative.parents:
                if folder != Path("."):
                    (CONTRACTS / folder / "__init__.py").touch(exist_ok=True)
            print(relative)
    print(f"{len(written)} stub files generated from {len(proto_files())} .proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
