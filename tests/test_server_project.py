"""Project context through the real server over stdio, on the tiny checkpoints: a workspace of files on
disk, some of them open in the editor. What reached each model is read back with `fimLsp.showPrompt`
(the decoded text of the tokens each model was given), so nothing here depends on what a random model
writes.

The cursor's line calls `scale_vector_by`, defined only in `helpers.py`, which is never opened: it can
reach the prompt only through the server's background index of the workspace. `private_scaler` is
defined only in a gitignored file that IS open in the editor, and `.env` is open too: neither may reach
any prompt."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from server_client import Session, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

HELPERS = '''def scale_vector_by(values, factor):
    """Every value times factor (HELPERS_MARKER)."""
    return [v * factor for v in values]
'''
MAIN = '''import helpers


def run(points):
    doubled = scale_vector_by(points, 2)
    shifted = private_scaler(doubled)
    return 
'''
OTHER = "".join(f"row_{i} = {i}\n" for i in range(40))
PRIVATE = '''def private_scaler(values):
    return values  # IGNORED_MARKER
'''
ENV = "API_TOKEN=ENV_SECRET_MARKER\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws") / "myrepo"
    root.mkdir()
    (root / "helpers.py").write_text(HELPERS)
    (root / "main.py").write_text(MAIN)
    (root / "other.py").write_text(OTHER)
    (root / "private.py").write_text(PRIVATE)
    (root / ".env").write_text(ENV)
    (root / ".gitignore").write_text("private.py\n")
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(tiny_models: Path, workspace: Path):
    async with start_server(tiny_models, folders=[workspace]) as session:
        await _index_built(session)
        yield session


async def _index_built(s: Session) -> list:
    for _ in range(600):
        for token, reports in s.client.progress_reports.items():
            if str(token).startswith("fim-lsp-index") and isinstance(reports[-1], types.WorkDoneProgressEnd):
                return reports
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no index progress ended: {s.client.progress_reports}")


def _uri(root: Path, name: str) -> str:
    return (root / name).as_uri()


async def _prompt(s: Session, root: Path, line: int, col: int) -> dict:
    items = await s.inline(_uri(root, "main.py"), line, col, invoked=True)
    assert isinstance(items, list)
    shown = await s.command("fimLsp.showPrompt")
    assert shown is not None and shown["uri"] == _uri(root, "main.py")
    return shown


def _secrets_absent(shown: dict) -> None:
    for text in (shown["qwen"], shown["dllm"]):
        assert "ENV_SECRET_MARKER" not in text and "IGNORED_MARKER" not in text
    assert not any(c["path"] in (".env", "private.py") for c in shown["context"] + shown["dllmContext"])


async def test_the_index_is_shown_with_progress_and_counted(s: Session, workspace: Path) -> None:
    reports = await _index_built(s)
    assert isinstance(reports[0], types.WorkDoneProgressBegin) and "index" in reports[0].title
    project = (await s.stats())["project"]
    # helpers.py, main.py, other.py; never private.py (gitignored) or .env
    assert project["roots"] == [str(workspace)] and project["indexFiles"] == 3


async def test_a_definition_from_an_unopened_file_reaches_the_prompt(s: Session, workspace: Path) -> None:
    s.open(_uri(workspace, "main.py"), MAIN)
    s.open(_uri(workspace, ".env"), ENV)
    s.open(_uri(workspace, "private.py"), PRIVATE)
    shown = await _prompt(s, workspace, 6, 11)
    qwen = shown["qwen"]
    assert qwen.startswith("<|repo_name|>myrepo\n")
    assert "<|file_sep|>helpers.py\n" in qwen and "HELPERS_MARKER" in qwen
    assert qwen.index("<|file_sep|>helpers.py") < qwen.index("<|file_sep|>main.py\n<|fim_prefix|>")
    assert {"path": "helpers.py", "source": "definition"}.items() <= next(
        c for c in shown["context"] if c["path"] == "helpers.py").items()
    assert "HELPERS_MARKER" in shown["dllm"] and "<|file_sep|>" not in shown["dllm"]  # plain text only
    _secrets_absent(shown)
    hover = await s.client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=_uri(workspace, "main.py")),
        position=types.Position(line=6, character=11)))
    assert "helpers.py" in hover.contents.value and "(definition)" in hover.contents.value


async def test_an_edit_in_another_open_document_goes_in_and_closing_it_takes_it_out(s: Session,
                                                                                      workspace: Path) -> None:
    other = _uri(workspace, "other.py")
    s.open(other, OTHER)
    s.replace(other, OTHER.replace("row_30 = 30\n", "row_30 = 'EDIT_MARKER'\n"))
    shown = await _prompt(s, workspace, 4, 4)
    edits = [c for c in shown["context"] if c["source"] == "edit"]
    assert [(c["path"], c["startLine"] <= 30 < c["endLine"]) for c in edits] == [("other.py", True)]
    assert "EDIT_MARKER" in shown["qwen"]
    _secrets_absent(shown)
    s.client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=other)))
    shown = await _prompt(s, workspace, 5, 4)
    assert not any(c["path"] == "other.py" for c in shown["context"]), shown["context"]
    assert "EDIT_MARKER" not in shown["qwen"]
    # its edited ranges went too: opened again (the edit undone on disk), none of them comes back
    s.open(other, OTHER)
    try:
        shown = await _prompt(s, workspace, 5, 0)
        assert not any(c["source"] == "edit" and c["path"] == "other.py" for c in shown["context"]), shown["context"]
    finally:
        s.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=other)))


async def test_settings_turn_context_off_and_a_bad_key_is_refused_by_name(s: Session, workspace: Path) -> None:
    seen = len(s.client.messages)
    s.configure(projectContext=False, contextMaxChunks=-1)
    for _ in range(100):
        if len(s.client.messages) > seen:
            break
        await asyncio.sleep(0.05)
    shown_msgs = " | ".join(m.message for m in s.client.messages[seen:])
    assert "contextMaxChunks" in shown_msgs and "projectContext" not in shown_msgs
    try:
        settings = (await s.stats())["settings"]
        assert settings["projectContext"] is False and settings["contextMaxChunks"] == 24
        shown = await _prompt(s, workspace, 3, 0)
        assert shown["context"] == [] and "<|file_sep|>" not in shown["qwen"] and "<|repo_name|>" not in shown["qwen"]
    finally:
        s.configure(projectContext=True)


async def test_an_excluded_file_never_reaches_the_prompt_even_while_open(s: Session, workspace: Path) -> None:
    s.configure(contextExclude=["helpers.py"])
    try:
        await _index_built_again(s)
        s.open(_uri(workspace, "helpers.py"), HELPERS)
        shown = await _prompt(s, workspace, 6, 10)
        assert "HELPERS_MARKER" not in shown["qwen"] and "HELPERS_MARKER" not in shown["dllm"]
        assert not any(c["path"] == "helpers.py" for c in shown["context"])
    finally:
        s.configure(contextExclude=[])


async def _index_built_again(s: Session) -> None:
    """An exclude change rebuilds the index: wait for a second index progress to end."""
    for _ in range(600):
        ended = [t for t, r in s.client.progress_reports.items()
                 if str(t).startswith("fim-lsp-index") and isinstance(r[-1], types.WorkDoneProgressEnd)]
        if len(ended) >= 2:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the index was not rebuilt")


async def test_an_edit_elsewhere_retires_the_cached_answer_made_without_it(s: Session, workspace: Path) -> None:
    """The same cursor, asked twice, is served from the cache; once another document is edited, the
    answer cached before the edit would hide it, so the next ask runs the models with the edit in."""
    _main_open(s, workspace)
    await _index_settled(s)  # an index build ending empties the cache: none may end in between
    other = _uri(workspace, "other.py")
    s.open(other, OTHER)
    try:
        first = await _prompt(s, workspace, 2, 0)
        again = await _prompt(s, workspace, 2, 0)
        assert not first["fromCache"] and again["fromCache"]
        assert "CACHE_EDIT_MARKER" not in again["qwen"]
        s.replace(other, OTHER.replace("row_12 = 12\n", "row_12 = 'CACHE_EDIT_MARKER'\n"))
        after = await _prompt(s, workspace, 2, 0)
        assert not after["fromCache"] and "CACHE_EDIT_MARKER" in after["qwen"]
        assert any(c["path"] == "other.py" and c["source"] == "edit" for c in after["context"])
    finally:
        s.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=other)))


def _main_open(s: Session, workspace: Path) -> None:
    """main.py open in the editor (an earlier test may have opened it already)."""
    if _uri(workspace, "main.py") not in s.versions:
        s.open(_uri(workspace, "main.py"), MAIN)


async def _index_settled(s: Session) -> None:
    """No index build under way: the server's index has finished (asked after every setting sent so
    far), and each index $/progress the client has seen has ended (the server ends one after acting on
    the build's end)."""
    for _ in range(600):
        progress = (await s.stats())["project"]["indexProgress"]
        runs = [r for t, r in s.client.progress_reports.items() if str(t).startswith("fim-lsp-index")]
        if progress and progress["finished"] and all(isinstance(r[-1], types.WorkDoneProgressEnd) for r in runs):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the index did not settle")


def _ended_index_runs(s: Session) -> int:
    return sum(1 for t, r in s.client.progress_reports.items()
               if str(t).startswith("fim-lsp-index") and isinstance(r[-1], types.WorkDoneProgressEnd))


async def test_a_removed_folder_leaves_the_context_and_an_added_one_is_indexed(s: Session, workspace: Path) -> None:
    """workspace/didChangeWorkspaceFolders: without its folder the file is outside the workspace (no
    repo, no path, no chunks); given back, the folder is indexed again (a new $/progress) and used."""
    folder = types.WorkspaceFolder(uri=workspace.as_uri(), name=workspace.name)

    def change(added: list[types.WorkspaceFolder], removed: list[types.WorkspaceFolder]) -> None:
        s.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=added, removed=removed)))

    _main_open(s, workspace)
    ended = _ended_index_runs(s)
    change([], [folder])
    try:
        for _ in range(100):
            project = (await s.stats())["project"]
            if project["roots"] == []:
                break
            await asyncio.sleep(0.05)
        assert project == {**project, "roots": [], "indexFiles": 0}
        shown = await _prompt(s, workspace, 1, 0)
        assert shown["context"] == [] and "<|repo_name|>" not in shown["qwen"] and "main.py" not in shown["qwen"]
    finally:
        change([folder], [])
    for _ in range(600):
        if _ended_index_runs(s) > ended:
            break
        await asyncio.sleep(0.05)
    assert (await s.stats())["project"]["indexFiles"] == 3
    shown = await _prompt(s, workspace, 6, 9)
    assert shown["qwen"].startswith("<|repo_name|>myrepo\n") and "HELPERS_MARKER" in shown["qwen"]


async def test_a_refused_current_file_gets_the_local_window_alone(s: Session, workspace: Path) -> None:
    """The cursor in the gitignored private.py: no repo name, no path, no chunks of other files (the
    models see the local window, as with project context off)."""
    private = _uri(workspace, "private.py")
    if private not in s.versions:
        s.open(private, PRIVATE)
    await s.inline(private, 1, 0, invoked=True)
    shown = await s.command("fimLsp.showPrompt")
    assert shown is not None and shown["uri"] == private
    assert shown["context"] == [] and shown["dllmContext"] == []
    assert "<|repo_name|>" not in shown["qwen"] and "<|file_sep|>" not in shown["qwen"]
    assert "private.py" not in shown["qwen"] and "HELPERS_MARKER" not in shown["qwen"] + shown["dllm"]
    assert "IGNORED_MARKER" in shown["qwen"]  # its own local window, as before
