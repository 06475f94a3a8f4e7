"""The log file (issue 18 item 15): a full disk is said once, not with a traceback per record; two
servers that share the log both write to `fim-lsp.log` after one of them rotates it.

Real servers over stdio, each with XDG_STATE_HOME pointed at a temp dir (where platformdirs puts the
log on Linux). The full disk is /dev/full, which fails every write with ENOSPC."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stdio_rpc import StdioServer

FAST = {"profile": "exact", "steps": 4, "maxNewTokens": 8, "dllmLengths": [4], "models": "qwen"}
MAX_BYTES = 5_000_000  # the server's rotation size

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths and /dev/full are Linux's")


def env_with_state(state: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(state)}


def log_path(state: Path) -> Path:
    return state / "fim-lsp" / "log" / "fim-lsp.log"


def say(server: StdioServer, marker: str) -> None:
    """Make the server write an info record naming `marker` (an unknown settings key), and wait for it."""
    server.notify("workspace/didChangeConfiguration", {"settings": {"fimLsp": {marker: 1}}})
    server.request("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []})


def test_a_full_disk_is_said_once(tiny_models: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log_path(state).parent.mkdir(parents=True)
    log_path(state).symlink_to("/dev/full")
    server = StdioServer(tiny_models, tmp_path / "stderr.txt", FAST, env=env_with_state(state))
    server.status("ready")
    for i in range(30):
        say(server, f"unknownKey{i}")
    server.request("shutdown")
    server.notify("exit")
    code, err = server.finish()
    assert code == 0
    assert "Logging error" not in err and "Traceback" not in err, err[:3000]
    assert err.count("cannot write the log file") == 1, err[:3000]
    assert len(err) < 2000, err[:3000]  # was ~2.6 KB per record


def test_two_servers_keep_writing_to_the_log_after_one_rotates_it(tiny_models: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = env_with_state(state)
    a = StdioServer(tiny_models, tmp_path / "a.txt", FAST, env=env)
    b = StdioServer(tiny_models, tmp_path / "b.txt", FAST, env=env)
    a.status("ready")
    b.status("ready")
    log = log_path(state)
    with log.open("ab") as f:  # the log is full: the next record rotates it
        f.write(b"#" * (MAX_BYTES + 10 - log.stat().st_size) + b"\n")
    say(a, "rotatedByA")
    say(b, "writtenByB")
    say(a, "writtenByA")
    for server in (a, b):
        server.request("shutdown")
        server.notify("exit")
        assert server.finish()[0] == 0
    current = log.read_text(encoding="utf-8", errors="replace")
    rotated = Path(f"{log}.1").read_text(encoding="utf-8", errors="replace")
    assert "#" * 100 in rotated and "#" * 100 not in current  # the full file moved to .1
    assert "writtenByB" in current and "writtenByA" in current
    assert "writtenByB" not in rotated and "writtenByA" not in rotated
    assert not Path(f"{log}.3").exists()
