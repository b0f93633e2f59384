"""Regenerates every generated file from proto/ and the async client; `make generate` runs it.

Writes, under clients/python/:
  agentcoord/v1/*_pb2.py, *_pb2_grpc.py   protoc (grpcio-tools) messages and stubs
  agentcoord/v1/*.pyi                      mypy-protobuf type stubs for both
  agentcoord/client/_sync/                 the sync client, made from _async/ by unasync

The output depends only on the inputs and the pinned tool versions, so `make check-generated`
can fail CI on any drift.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import unasync
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "clients" / "python"
GENERATED = OUT / "agentcoord" / "v1"
CLIENT = OUT / "agentcoord" / "client"

# Names that differ between the async client and the sync one made from it.
SYNC_NAMES = {
    "AsyncClient": "Client",
    "_async": "_sync",
    "AsyncTransport": "SyncTransport",
    "AsyncWorker": "Worker",
    "async_sleep": "sync_sleep",
    "async_monotonic": "sync_monotonic",
}


def generate_protos() -> None:
    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    well_known = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (GENERATED / "__init__.py").write_text(
        '"""Generated from proto/agentcoord/v1 by make generate; do not edit."""\n'
    )


def generate_sync_client() -> None:
    sync_dir = CLIENT / "_sync"
    shutil.rmtree(sync_dir, ignore_errors=True)
    sources = sorted(str(p) for p in (CLIENT / "_async").glob("*.py"))
    rule = unasync.Rule(str(CLIENT / "_async"), str(sync_dir), additional_replacements=SYNC_NAMES)
    unasync.unasync_files(sources, [rule])
    header = "# Generated from ../_async by `make generate` (unasync); do not edit.\n"
    for path in sorted(sync_dir.glob("*.py")):
        path.write_text(header + path.read_text())


if __name__ == "__main__":
    generate_protos()
    generate_sync_client()
