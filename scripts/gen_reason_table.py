"""Writes the README's table of error reasons from proto/agentcoord/v1/error_reason.proto; `make
generate` runs it and tests/test_readme_reasons.py fails when the README's copy is stale.

Each ErrorReason value's comment starts with the status code(s) it comes with, then says when it
is sent and what a client should do. The table's "Client should" column condenses that advice
into the vocabulary of the enum's own header (retry, resume, re-authenticate, re-read, give up)
by the rules in ACTIONS, matched on the comment and the status code; the last column is the
comment itself.

    python scripts/gen_reason_table.py [--check]
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- error reasons: generated from error_reason.proto by make generate -->"
END = "<!-- end of error reasons -->"

# (pattern on the comment, status codes that match instead, action): the first match wins.
ACTIONS = [
    (r"clients do this", (), "resume (the clients do it)"),
    (r"$^", ("UNAVAILABLE",), "retry with backoff (streams: resume)"),
    (r"subscribe without a cursor", (), "re-read, then subscribe without a cursor"),
    (r"report it|tell its operator", (), "give up: report it"),
    (r"higher tier", ("UNAUTHENTICATED",), "re-authenticate"),
    (r"re-read|decide again|merge, save again", (), "re-read, then decide again"),
    (r"back off", (), "retry with backoff, or send less"),
    (r"retry after that", (), "retry after the delay it names"),
    (r"stop working on it", (), "give up: stop working on the task"),
    (r"registeragent again", (), "register again, then retry"),
    (r"acquire again with a wait", (), "retry, waiting for the lock"),
    (r"stop using the guarded resource", (), "give up: stop using the resource under that token"),
]
FALLBACK = "give up (the same call fails again)"


def descriptor() -> descriptor_pb2.FileDescriptorProto:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reasons.pb"
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            "agentcoord/v1/error_reason.proto",
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def action(codes: str, comment: str) -> str:
    for pattern, matching_codes, name in ACTIONS:
        if re.search(pattern, comment, re.I) or any(
            code in codes.split() for code in matching_codes
        ):
            return name
    return FALLBACK


def table() -> str:
    file = descriptor()
    index, enum = next((i, e) for i, e in enumerate(file.enum_type) if e.name == "ErrorReason")
    comments: dict[int, str] = {}
    for location in file.source_code_info.location:
        path = list(location.path)
        if path[:3] == [5, index, 2] and len(path) == 4:  # enum_type[index].value[i]
            comments[path[3]] = " ".join(location.leading_comments.split())
    rows = [
        "| Reason | Status | Client should | When (from the contract) |",
        "|---|---|---|---|",
    ]
    for i, value in enumerate(enum.value):
        if value.number == 0:
            continue
        comment = comments.get(i, "")
        match = re.match(r"((?:[A-Z_]+(?: or |, )?)+)(?: \(([^)]*)\))?: (.*)", comment)
        code, text = (match.group(1), match.group(3)) if match else ("", comment)
        if match and match.group(2):
            text = f"({match.group(2)}) {text}"
        text = text.replace("|", "\\|")
        rows.append(f"| `{value.name}` | {code} | {action(code, comment)} | {text} |")
    return "\n".join([BEGIN, *rows, END])


def updated_readme() -> str:
    readme = README.read_text()
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"README.md lacks the {BEGIN!r} … {END!r} markers")
    return readme[:start] + table() + readme[end + len(END) :]


if __name__ == "__main__":
    fresh = updated_readme()
    if "--check" in sys.argv[1:]:
        sys.exit(
            0
            if fresh == README.read_text()
            else "README.md's error reasons are stale: make generate"
        )
    if fresh != README.read_text():
        README.write_text(fresh)
