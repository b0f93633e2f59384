"""Every Lua script the server registers declares in KEYS every key it touches (issue 13).

Two checks. Statically, over the text of every script a running server registered: no key
position of a redis.call is a concatenation, an ARGV value or a literal, nor a name assigned
from one. At run time, every script an in-process test server registers runs under
support.KEY_GUARD_LUA (conftest.py), so each RPC of every suite — on the standalone Redis and on
the cluster — fails if its script touches an undeclared key; the tests here check the guard
itself can fail.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis
from agentcoord_server.store import scripts

from .support import KEY_GUARD_LUA, KEY_GUARD_MARK, guarded, unguarded

pytestmark = pytest.mark.every_backend

KEYLESS = {"TIME", "PUBLISH"}
"""Commands whose arguments name no key."""
ALL_KEYS = {"DEL", "EXISTS", "UNLINK", "MGET", "TOUCH"}
"""Commands whose every argument is a key."""


def _strip_comments(source: str) -> str:
    return re.sub(r"(^|\s)--[^\n]*", r"\1", source)


def _split_args(text: str, start: int) -> list[str]:
    """The top-level, comma-separated arguments of the call whose '(' is at text[start]."""
    args, depth, quote, current = [], 0, "", ""
    for ch in text[start + 1 :]:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append(current.strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise AssertionError("unbalanced redis.call")


def _assignments(source: str) -> dict[str, list[str]]:
    """name → every expression assigned to it (`[local] a, b = x, y`), by position."""
    found: dict[str, list[str]] = {}
    for line in source.splitlines():
        m = re.match(r"\s*(?:local\s+)?([A-Za-z_][\w\s,]*?)\s*=(?!=)\s*(.+)$", line)
        if not m:
            continue
        names = [n.strip() for n in m.group(1).split(",")]
        values = _split_args("(" + m.group(2) + ")", 0) if len(names) > 1 else [m.group(2)]
        for i, name in enumerate(names):
            found.setdefault(name, []).append(values[i] if i < len(values) else "")
    return found


def built_keys(source: str) -> list[str]:
    """The key arguments of `source`'s redis.call/pcall that are built rather than declared:
    a concatenation, an ARGV value or a literal, or a name assigned one of those."""
    text = _strip_comments(source)
    assigned = _assignments(text)

    def built(expr: str) -> bool:
        if ".." in expr or "ARGV" in expr or expr[:1] in "'\"":
            return True
        return any(".." in v or "ARGV" in v for v in assigned.get(expr, []))

    bad = []
    for m in re.finditer(r"redis\.p?call\(", text):
        args = _split_args(text, m.end() - 1)
        command = args[0].strip("'\"").upper()
        if command in KEYLESS or len(args) < 2:
            continue
        keys = args[1:] if command in ALL_KEYS else args[1:2]
        bad += [f"{command} {k}" for k in keys if built(k)]
    return bad


def test_every_script_the_server_registers_declares_its_keys(server):
    registered = [s for found in list(scripts._registered.values()) for s in found]
    sources = {scripts.script_name(s.sha): unguarded(s.script) for s in registered}
    assert all(s.script.startswith(KEY_GUARD_MARK) for s in registered)  # the run-time check
    assert {"tasks_claim", "tasks_complete", "tasks_cancel", "signals_send", "staging_stage"} <= set(
        sources
    )

    # And every script file, for one a server registers only on need (tasks_migrate).
    for path in resources.files("agentcoord_server.store").joinpath("lua").iterdir():
        if path.name.endswith(".lua"):
            sources.setdefault(path.name.removesuffix(".lua"), path.read_text())

    offenders = {name: built for name, src in sources.items() if (built := built_keys(src))}

    assert offenders == {}


def test_the_static_check_finds_a_key_built_inside_a_script():
    source = """local P = ARGV[1]
local tkey = P .. 'tasks:t:' .. ARGV[2]
redis.call('HGET', tkey, 'status')
redis.call('ZADD', P .. 'tasks:q', 1, 'x')
redis.call('GET', ARGV[3])
redis.call('DEL', KEYS[1], 'ac:{ns}:other')
redis.call('HSET', KEYS[1], 'f', P .. 'not a key')"""

    assert built_keys(source) == [
        "HGET tkey",
        "ZADD P .. 'tasks:q'",
        "GET ARGV[3]",
        "DEL 'ac:{ns}:other'",
    ]


def test_the_run_time_guard_fails_a_script_touching_an_undeclared_key(
    redis_client, namespace
):
    declared = f"ac:{{{namespace}}}:declared"
    script = "redis.call('SET', KEYS[1], 1) return redis.call('GET', KEYS[1] .. ':built')"

    assert redis_client.eval(guarded("return redis.call('INCR', KEYS[1])"), 1, declared) == 1
    with pytest.raises(redis.ResponseError, match="undeclared key"):
        redis_client.eval(guarded(script), 1, declared)
    assert guarded(guarded(script)) == KEY_GUARD_LUA + script
