"""The VS Code extension inside a real VS Code: code-server serves VS Code to Debian's Chromium, which
Playwright drives with real key presses. The packaged .vsix is installed as a user would install it,
and the extension starts the real server on tiny random-weight checkpoints.

Needs `editors/vscode/tests/setup-code-server.sh` to have run (it writes .code-server/ready.json);
skipped otherwise. Set FIM_VSCODE_SCREENSHOT=PATH to keep a picture of the ghost text. Every
process started here (code-server, its extension host, the server, Chromium) is stopped by the end."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "editors" / "vscode"
SETUP = Path(os.environ.get("FIM_CODE_SERVER_DIR", EXT / ".code-server"))
SETUP_HINT = "run editors/vscode/tests/setup-code-server.sh first"

SOURCE = "import math\n\n\ndef circle_area(radius: float) -> float:\n    "
TYPED = "return "
GHOST = ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text"
# The server waits for this file before it starts, so keys typed before it exists are
# certain to come while the extension is still starting the server.
GATE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nos.execv(sys.executable, [sys.executable, '-m', 'fim_lsp'])"

# Nothing else in VS Code may take Tab, answer first or open a page over the editor.
USER_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "chat.disableAIFeatures": True,
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.inlineSuggest.enabled": True,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "files.autoSave": "afterDelay",
    "files.autoSaveDelay": 200,
}


@pytest.fixture(scope="module")
def setup() -> dict[str, str]:
    """Paths to Node 24, code-server, vsce and Chromium, as the setup script wrote them."""
    ready = SETUP / "ready.json"
    if not ready.exists():
        pytest.skip(f"no real VS Code here ({ready} is missing): {SETUP_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(f"playwright is not installed in this Python: {SETUP_HINT}")
    return json.loads(ready.read_text(encoding="utf-8"))


def node_env(setup: dict[str, str]) -> dict[str, str]:
    """code-server and vsce run on the Node that setup installed (code-server needs Node 24)."""
    return {**os.environ, "PATH": f"{Path(setup['node']).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def vsix(setup: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension as it is in this checkout, compiled and packaged."""
    out = tmp_path_factory.mktemp("vsix") / "fim-lsp.vsix"
    env = node_env(setup)
    run(["npm", "run", "compile"], cwd=EXT, env=env)
    run([setup["vsce"], "package", "--allow-missing-repository", "--skip-license", "--out", str(out)], cwd=EXT, env=env)
    return out


def run(cmd: list[str], **kwargs: Any) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Workbench:
    """A browser page on code-server, with the workspace's Python file and the user-data dir."""

    page: Any
    source: Path
    user_data: Path
    gate: Path | None

    @property
    def status_item(self) -> Any:
        """The extension's status bar item (its text after the icon starts with "FIM ")."""
        return self.page.locator(".statusbar-item", has_text=re.compile(r"^\s*FIM "))

    def status(self, text: str, timeout_s: float) -> None:
        """Waits until the status bar item reads `text`."""
        self.status_item.filter(has_text=text).first.wait_for(timeout=timeout_s * 1000)

    def open_source(self) -> None:
        self.page.get_by_role("treeitem", name=self.source.name).click()
        self.page.locator(".monaco-editor textarea").first.wait_for(state="attached")
        self.page.locator(".monaco-editor .view-lines").first.click()
        self.page.keyboard.press("Control+End")

    def type(self, text: str) -> None:
        self.page.keyboard.type(text, delay=40)

    def saved_text(self, grown_from: str, timeout_s: float = 10) -> str:
        """The file once autosave has added to `grown_from`, read twice alike (a read can land
        in the middle of a save)."""
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            text = self.source.read_text(encoding="utf-8")
            if text == last and text.startswith(grown_from) and len(text) > len(grown_from):
                return text
            assert time.monotonic() < deadline, f"the edit was never saved: {text!r}"
            last = text
            time.sleep(0.2)

    def shown_candidates(self) -> dict[str, Any]:
        """Runs `fim-lsp: Show competing completions`; returns the server's answer, which the
        extension writes to its output channel, after checking the quick pick agrees with it."""
        self.page.keyboard.press("F1")
        self.page.keyboard.type("fim-lsp: Show competing completions", delay=10)
        self.page.locator(".quick-input-list .monaco-list-row", has_text="Show competing completions").first.wait_for()
        self.page.keyboard.press("Enter")
        title = self.page.locator(".quick-input-title", has_text="Competing completions").first
        title.wait_for()
        result = self.logged_candidates()
        assert f"winner: {result['winner']}" in title.inner_text()
        starred = self.page.locator(".quick-input-list .monaco-list-row", has=self.page.locator(".codicon-star-full"))
        assert result["winner"] in starred.first.inner_text()
        self.page.keyboard.press("Escape")
        return result

    def logged_candidates(self, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for log in self.user_data.glob("logs/**/*fim-lsp*.log"):
                found = re.findall(r"competing completions: (\{.*\})$", log.read_text(encoding="utf-8"), re.M)
                if found:
                    return json.loads(found[-1])
            assert time.monotonic() < deadline, "fim-lsp's output channel never logged the candidates"
            time.sleep(0.2)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stops code-server and everything it started (extension host, the fim-lsp server)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    raise AssertionError(f"processes of group {proc.pid} survived SIGKILL")


@pytest.fixture
def workbench(setup: dict[str, str], vsix: Path, tiny_models: Path, tmp_path: Path,
              request: pytest.FixtureRequest) -> Iterator[Workbench]:
    """A fresh code-server with the extension installed, a workspace holding one Python file, and a
    browser page on it. With `request.param` true the server waits for the file `Workbench.gate`."""
    from playwright.sync_api import sync_playwright

    gate = tmp_path / "gate" if getattr(request, "param", False) else None
    user_data, extensions, work = tmp_path / "user-data", tmp_path / "extensions", tmp_path / "work"
    (user_data / "User").mkdir(parents=True)
    (user_data / "User" / "settings.json").write_text(json.dumps(USER_SETTINGS), encoding="utf-8")
    # Under code-server the user scope is ignored for machine-scoped keys such as the command.
    (work / ".vscode").mkdir(parents=True)
    command = [sys.executable, "-c", GATE, str(gate)] if gate else [sys.executable, "-m", "fim_lsp"]
    (work / ".vscode" / "settings.json").write_text(json.dumps({
        "fimLsp.server.command": command,
        "fimLsp.arModel": str(tiny_models / "ar"),
        "fimLsp.dllmModel": str(tiny_models / "dllm"),
        "fimLsp.device": "cpu",
        "fimLsp.steps": 4,
        "fimLsp.maxNewTokens": 8,
        "fimLsp.dllmLengths": [4],
        "fimLsp.waitForModelsMs": 60000,
    }), encoding="utf-8")
    source = work / "geometry.py"
    source.write_text(SOURCE, encoding="utf-8")

    # code-server writes a config and logs under the XDG dirs, the server its log, Chromium its
    # crash reports: all go here, not to $HOME.
    xdg = {f"XDG_{name}_HOME": str(tmp_path / "xdg" / name.lower()) for name in ("CONFIG", "DATA", "STATE", "CACHE")}
    env = {**node_env(setup), **xdg, "HF_HUB_OFFLINE": "1"}
    dirs = ["--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    run([setup["code_server"], *dirs, "--install-extension", str(vsix)], env=env)
    port = free_port()
    log = (tmp_path / "code-server.log").open("wb")
    proc = subprocess.Popen(
        [setup["code_server"], *dirs, "--bind-addr", f"127.0.0.1:{port}", "--auth", "none",
         "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
         "--disable-getting-started-override", str(work)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "code-server.log").read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "code-server did not listen within 120 s"
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=setup["chromium"], env={**os.environ, **xdg})
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 520})
                page.set_default_timeout(90_000)
                page.goto(f"http://127.0.0.1:{port}/?folder={work}")
                page.locator(".monaco-workbench").wait_for()
                yield Workbench(page, source, user_data, gate)
            finally:
                browser.close()
    finally:
        stop_group(proc)
        log.close()


def accept_and_check(bench: Workbench, before: str) -> None:
    """Tab takes the ghost text; what lands in the file must be the server's winning completion."""
    bench.page.locator(GHOST).first.wait_for(state="visible")
    screenshot = os.environ.get("FIM_VSCODE_SCREENSHOT")
    if screenshot:
        bench.page.screenshot(path=screenshot)
    bench.page.keyboard.press("Tab")
    bench.page.locator(GHOST).first.wait_for(state="detached")
    inserted = bench.saved_text(grown_from=before)[len(before):]
    result = bench.shown_candidates()
    assert inserted == result["completion"], (inserted, result)
    assert result["winner"] in {c["model"] for c in result["candidates"]}


def test_tab_accepts_the_servers_winner(workbench: Workbench) -> None:
    workbench.open_source()
    workbench.status("FIM ready", timeout_s=120)
    workbench.type(TYPED)
    accept_and_check(workbench, SOURCE + TYPED)


@pytest.mark.parametrize("workbench", [True], indirect=True, ids=["gated-server"])
def test_keys_typed_while_starting_get_a_completion_once_ready(workbench: Workbench) -> None:
    workbench.open_source()
    workbench.status("FIM starting", timeout_s=60)
    workbench.type(TYPED)
    before = workbench.saved_text(grown_from=SOURCE)
    assert before == SOURCE + TYPED
    assert workbench.status_item.first.inner_text().strip() == "FIM starting"
    assert workbench.gate is not None
    workbench.gate.write_text("")
    workbench.status("FIM ready", timeout_s=120)
    # No key is pressed from here on: the extension itself must ask once the server is ready.
    accept_and_check(workbench, before)
