"""Regenerates every generated file from proto/ and the async client; `make generate` runs it.

Writes, under clients/python/:
  agentcoord/v1/*_pb2.py, *_pb2_grpc.py   protoc (grpcio-tools) messages and stubs
  agentcoord/v1/*.pyi                      mypy-protobuf type stubs for both
  agentcoord/client/_sync/                 the sync client, made from _async/ by unasync
  agentcoord/client/reasons.py             ErrorReason as a str enum, with the contract's comments

The output depends only on the inputs and the pinned tool versions, so `make check-generated`
can fail CI on any drift.
"""

from __future__ import annotations

import filecmp
import keyword
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import unasync
from gen_reason_table import descriptor as error_reason_descriptor
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
    "AsyncLeaseKeeper": "LeaseKeeper",
    "AsyncHandlerRun": "HandlerRun",
    "AsyncCancelWatch": "CancelWatch",
    "AsyncTaskHandler": "TaskHandler",
    "AsyncLockKeeper": "LockKeeper",
    "AsyncHeldLock": "HeldLock",
    "AsyncAgent": "Agent",
    "AsyncCoordinator": "Coordinator",
    "AsyncTeamSession": "TeamSession",
    "async_sleep": "sync_sleep",
    "async_monotonic": "sync_monotonic",
}


def sync_tree(source: Path, target: Path) -> None:
    """Makes `target` hold exactly `source`'s files, rewriting only those that changed, so a
    test run importing from `target` meanwhile never sees it empty."""
    target.mkdir(parents=True, exist_ok=True)
    fresh = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    for old in [p for p in target.rglob("*") if p.is_file()]:
        if old.relative_to(target) not in fresh and "__pycache__" not in old.parts:
            old.unlink()
    for rel in sorted(fresh):
        dest = target / rel
        if not dest.exists() or not filecmp.cmp(source / rel, dest, shallow=False):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, dest)


def generate_protos() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _generate_protos(Path(tmp))
        sync_tree(Path(tmp) / "agentcoord" / "v1", GENERATED)


def _generate_protos(out: Path) -> None:
    bin_dir = Path(sys.executable).parent
    well_known = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / "agentcoord" / "v1" / "__init__.py").write_text(
        '"""Generated from proto/agentcoord/v1 by make generate; do not edit."""\n'
    )


def generate_reasons() -> None:
    """Writes ErrorReason as a `StrEnum` whose members equal the ErrorInfo.reason strings, so
    `error.reason == ErrorReason.TIER_TOO_LOW` reads naturally; each member's docstring is its
    comment in error_reason.proto."""
    proto_file = error_reason_descriptor()
    enum_index, enum = next(
        (i, e) for i, e in enumerate(proto_file.enum_type) if e.name == "ErrorReason"
    )
    comments: dict[int, str] = {}
    for location in proto_file.source_code_info.location:
        # path [5 = FileDescriptorProto.enum_type, enum index, 2 = EnumDescriptorProto.value, i]
        if list(location.path[:3]) == [5, enum_index, 2] and len(location.path) == 4:
            comments[location.path[3]] = " ".join(location.leading_comments.split())
    lines = [
        '"""Generated from proto/agentcoord/v1/error_reason.proto by `make generate`; do not edit.',
        "",
        "Every reason an agentcoord server sends in google.rpc.ErrorInfo.reason. Members are",
        "strings equal to the wire reason, so `err.reason == ErrorReason.TIER_TOO_LOW` holds.",
        '"""',
        "",
        "from enum import StrEnum",
        "",
        "",
        "class ErrorReason(StrEnum):",
        '    """The values of the contract\'s ErrorReason enum; error_reason.proto says when each',
        '    is sent and what a client should do."""',
        "",
    ]
    for i, value in enumerate(enum.value):
        if value.number == 0:
            continue
        assert value.name.isidentifier() and not keyword.iskeyword(value.name), value.name
        doc = comments.get(i, "").replace('"""', "'''").replace("\\", "\\\\")
        wrapped = textwrap.wrap(f'"""{doc}"""', 96, initial_indent="    ", subsequent_indent="    ")
        lines += [f'    {value.name} = "{value.name}"', *wrapped, ""]
    target = CLIENT / "reasons.py"
    text = "\n".join(lines).rstrip() + "\n"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def generate_sync_client() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async_dir, sync_dir = Path(tmp) / "_async", Path(tmp) / "_sync"
        shutil.copytree(CLIENT / "_async", async_dir, ignore=shutil.ignore_patterns("__pycache__"))
        sources = sorted(str(p) for p in async_dir.glob("*.py"))
        rule = unasync.Rule(str(async_dir), str(sync_dir), additional_replacements=SYNC_NAMES)
        unasync.unasync_files(sources, [rule])
        header = "# Generated from ../_async by `make generate` (unasync); do not edit.\n"
        for path in sorted(sync_dir.glob("*.py")):
            path.write_text(header + path.read_text())
        sync_tree(sync_dir, CLIENT / "_sync")


if __name__ == "__main__":
    generate_protos()
    generate_reasons()
    generate_sync_client()
