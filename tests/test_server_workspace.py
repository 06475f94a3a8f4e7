"""The workspace as the server follows it, over stdio on the tiny checkpoints: folders added and removed,
files saved or changed outside the editor (watched files, with the watcher the server registers),
the rootUri of a client that sends no folders, and a current file that privacy refuses. What reached
the models is read back with `fimLsp.showPrompt`, so nothing depends on what a random model writes.

Each test's cursor calls a function that only a file on disk defines, under a name used nowhere else,
so the definition can reach the prompt only through the index."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from server_client import Session, capabilities, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _caller(name: str) -> str:
    return f"import os\n\n\ndef run(points):\n    out = {name}(points, 2)\n    return \n"


def _definition(name: str, marker: str) -> str:
    return f'def {name}(values, factor):\n    """{marker}"""\n    return [v * factor for v in values]\n'


def _watching_caps() -> types.ClientCapabilities:
    caps = capabilities()
    caps.workspace = types.WorkspaceClientCapabilities(
        workspace_folders=True,
        did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True))
    return caps


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("wsf")
    a, b = base / "alpha", base / "beta"
    a.mkdir()
    b.mkdir()
    (a / "helpers.py").write_text(_definition("first_helper_fn", "FIRST_MARKER"))
    (a / ".gitignore").write_text("private.py\n")
    (b / "far_lib.py").write_text(_definition("far_away_fn", "FAR_MARKER"))
    return a, b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(tiny_models: Path, folders: tuple[Path, Path]):
    async with start_server(tiny_models, folders=[folders[0]], caps=_watching_caps()) as session:
        await _index_ends(session, 1)
        yield session


def _ended(s: Session) -> int:
    return sum(1 for t, r in s.client.progress_reports.items()
               if str(t).startswith("fim-lsp-index") and isinstance(r[-1], types.WorkDoneProgressEnd))


async def _index_ends(s: Session, n: int) -> None:
    """Wait until `n` index builds have ended (each one a `$/progress` begin ... end)."""
    for _ in range(600):
        if _ended(s) >= n:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{_ended(s)} index builds ended, not {n}: {s.client.progress_reports}")


async def _prompt_at(s: Session, path: Path, text: str, line: int = 5, col: int = 11) -> dict:
    """Open (or replace) `path` with `text`, complete at (line, col) and return fimLsp.showPrompt."""
    uri = path.as_uri()
    if uri in s.versions:
        s.replace(uri, text)
    else:
        s.open(uri, text)
    await s.inline(uri, line, col, invoked=True)
    shown = await s.command("fimLsp.showPrompt")
    assert shown is not None and shown["uri"] == uri
    return shown


async def _applied(s: Session) -> None:
    """Wait until the server has applied the file events it was sent (on a thread of its own; the
    notification's handler only queues them)."""
    for _ in range(600):
        if (await s.stats())["project"]["pendingFileEvents"] == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("file events still pending")


def _definitions(shown: dict) -> list[str]:
    return [c["path"] for c in shown["context"] if c["source"] == "definition"]


async def test_the_server_declares_the_command_and_folder_changes(s: Session) -> None:
    caps = s.init.capabilities
    assert "fimLsp.showPrompt" in caps.execute_command_provider.commands
    folders = caps.workspace.workspace_folders
    assert folders.supported and folders.change_notifications


async def test_a_file_watcher_is_registered_where_the_client_allows(s: Session) -> None:
    for _ in range(100):
        if s.registrations:
            break
        await asyncio.sleep(0.05)
    (reg,) = [r for r in s.registrations if r.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES]
    assert [w["globPattern"] for w in reg.register_options["watchers"]] == ["**/*"]


async def test_a_saved_file_is_indexed_again(s: Session, folders: tuple[Path, Path]) -> None:
    a, _ = folders
    main = a / "main_saved.py"
    shown = await _prompt_at(s, main, _caller("saved_later_fn"))
    assert "SAVED_MARKER" not in shown["qwen"]
    helpers = a / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n\n" + _definition("saved_later_fn", "SAVED_MARKER"))
    s.client.text_document_did_save(types.DidSaveTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=helpers.as_uri())))
    await _applied(s)
    shown = await _prompt_at(s, main, _caller("saved_later_fn") + "\n")
    assert "SAVED_MARKER" in shown["qwen"] and _definitions(shown) == ["helpers.py"], shown["context"]


async def test_files_created_and_deleted_outside_the_editor_follow_watched_file_events(
        s: Session, folders: tuple[Path, Path]) -> None:
    a, _ = folders
    made = a / "made_outside.py"
    made.write_text(_definition("watched_new_fn", "WATCHED_MARKER"))
    s.client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        changes=[types.FileEvent(uri=made.as_uri(), type=types.FileChangeType.Created)]))
    await _applied(s)
    main = a / "main_watched.py"
    shown = await _prompt_at(s, main, _caller("watched_new_fn"))
    assert "WATCHED_MARKER" in shown["qwen"] and _definitions(shown) == ["made_outside.py"]
    made.unlink()
    s.client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        changes=[types.FileEvent(uri=made.as_uri(), type=types.FileChangeType.Deleted)]))
    await _applied(s)
    shown = await _prompt_at(s, main, _caller("watched_new_fn") + "\n")
    assert "WATCHED_MARKER" not in shown["qwen"] and _definitions(shown) == []


async def test_a_folder_added_is_indexed_and_a_folder_removed_leaves_the_context(
        s: Session, folders: tuple[Path, Path]) -> None:
    a, b = folders
    main = a / "main_folders.py"
    shown = await _prompt_at(s, main, _caller("far_away_fn"))
    assert "FAR_MARKER" not in shown["qwen"]
    ended = _ended(s)
    beta = types.WorkspaceFolder(uri=b.as_uri(), name=b.name)
    s.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
        event=types.WorkspaceFoldersChangeEvent(added=[beta], removed=[])))
    await _index_ends(s, ended + 1)
    assert (await s.stats())["project"]["roots"] == [str(a), str(b)]
    shown = await _prompt_at(s, main, _caller("far_away_fn") + "\n")
    assert "FAR_MARKER" in shown["qwen"] and _definitions(shown) == ["far_lib.py"]
    s.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
        event=types.WorkspaceFoldersChangeEvent(added=[], removed=[beta])))
    await _index_ends(s, ended + 2)
    project = (await s.stats())["project"]
    assert project["roots"] == [str(a)]
    shown = await _prompt_at(s, main, _caller("far_away_fn") + "\n\n")
    assert "FAR_MARKER" not in shown["qwen"] and _definitions(shown) == []


async def test_a_current_file_privacy_refuses_gets_its_local_window_alone(
        s: Session, folders: tuple[Path, Path]) -> None:
    """A gitignored file being edited is completed from its own text only: no chunk of another file,
    and neither its path nor the repo's name goes in (the prompt is what it was before project context)."""
    a, _ = folders
    text = _caller("first_helper_fn").replace("return \n", "return  # PRIVATE_MARKER\n")
    shown = await _prompt_at(s, a / "private.py", text)
    assert shown["context"] == [] and shown["dllmContext"] == []
    qwen = shown["qwen"]
    assert "<|repo_name|>" not in qwen and "<|file_sep|>" not in qwen and "private.py" not in qwen
    assert "FIRST_MARKER" not in qwen and qwen.startswith("<|fim_prefix|>import os")
    assert "PRIVATE_MARKER" in qwen  # its own local window still goes in
    # the same call from a file that may be read takes the definition
    shown = await _prompt_at(s, a / "public.py", _caller("first_helper_fn"))
    assert _definitions(shown) == ["helpers.py"] and "<|file_sep|>public.py\n" in shown["qwen"]
    # and the refused file is never a source of another file's prompt
    assert "PRIVATE_MARKER" not in shown["qwen"]


async def test_a_client_with_a_root_uri_alone_and_no_progress_gets_the_index(tiny_models: Path,
                                                                            folders: tuple[Path, Path]) -> None:
    _, b = folders
    async with start_server(tiny_models, root=b, caps=capabilities(progress=False)) as s:
        for _ in range(600):
            project = (await s.stats())["project"]
            if (project["indexProgress"] or {}).get("finished"):
                break
            await asyncio.sleep(0.05)
        assert project["roots"] == [str(b)] and project["indexFiles"] == 1, project
        assert not any(str(t).startswith("fim-lsp-index") for t in s.client.progress_reports)
        shown = await _prompt_at(s, b / "use_far.py", _caller("far_away_fn"))
        assert "FAR_MARKER" in shown["qwen"] and shown["qwen"].startswith(f"<|repo_name|>{b.name}\n")


async def test_a_context_setting_change_is_not_answered_from_the_cache(s: Session, folders: tuple[Path, Path]) -> None:
    """The same text at the same place, before and after `projectContext: false`: the cached completion
    was made with the definition in its prompt, so it must not be served as the answer now."""
    a, _ = folders
    main = a / "main_cache.py"
    shown = await _prompt_at(s, main, _caller("first_helper_fn"))
    assert _definitions(shown) == ["helpers.py"]
    again = await _prompt_at(s, main, _caller("first_helper_fn"))
    assert again["fromCache"]  # the same request is served from the cache ...
    s.configure(projectContext=False)
    try:
        for _ in range(100):
            if (await s.stats())["settings"]["projectContext"] is False:
                break
            await asyncio.sleep(0.05)
        shown = await _prompt_at(s, main, _caller("first_helper_fn"))
        assert not shown["fromCache"] and shown["context"] == []  # ... until the context settings change
        assert "FIRST_MARKER" not in shown["qwen"]
    finally:
        s.configure(projectContext=True)


async def test_an_incremental_edit_in_another_open_document_puts_its_range_in(s: Session,
                                                                              folders: tuple[Path, Path]) -> None:
    """Editors send ranges (VS Code, Neovim), not whole documents: the edited lines of another open
    document go in as an "edit" chunk, placed where the edit now is."""
    a, _ = folders
    rows = "".join(f"row_{i} = {i}\n" for i in range(60))
    other = (a / "rows.py").as_uri()
    s.open(other, rows)
    s.versions[other] += 1
    s.client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=other, version=s.versions[other]),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=40, character=0), end=types.Position(line=41, character=0)),
            text="row_40 = 'FIRST_EDIT'\nrow_40b = 'INCREMENTAL_MARKER'\n")]))
    shown = await _prompt_at(s, a / "main_incremental.py", _caller("nothing_defined_fn"))
    edits = [c for c in shown["context"] if c["source"] == "edit" and c["path"] == "rows.py"]
    assert len(edits) == 1 and edits[0]["startLine"] <= 41 < edits[0]["endLine"], shown["context"]
    assert "INCREMENTAL_MARKER" in shown["qwen"] and "FIRST_EDIT" in shown["qwen"]
    s.client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=other)))


async def test_documents_whose_path_cannot_be_resolved_break_nothing(s: Session, folders: tuple[Path, Path]) -> None:
    """A URI with an encoded NUL byte names no file that can exist (resolving it raises): a request in
    it is answered, and while it is open every other document keeps its context (every gather meets it
    among the open documents)."""
    a, _ = folders
    odd = (a / "odd.py").as_uri().replace("odd.py", "od%00d.py")
    errors = (await s.stats())["errors"]
    s.open(odd, _caller("first_helper_fn"))
    assert isinstance(await s.inline(odd, 5, 11, invoked=True), list)
    shown = await _prompt_at(s, a / "main_odd.py", _caller("first_helper_fn"))
    assert _definitions(shown) == ["helpers.py"]
    assert (await s.stats())["errors"] == errors
    s.client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=odd)))


async def test_a_failing_gather_leaves_the_local_window(tiny_models: Path, folders: tuple[Path, Path]) -> None:
    """Gathering raises (injected): the completion is still made, from the local window alone."""
    a, _ = folders
    launcher = [str(Path(__file__).parent / "faulty_server.py"), "gather", "--"]
    async with start_server(tiny_models, folders=[a], launcher=launcher) as s:
        shown = await _prompt_at(s, a / "main_failing.py", _caller("first_helper_fn"))
        assert shown["context"] == [] and shown["qwen"].startswith("<|fim_prefix|>import os")
        assert (await s.stats())["errors"] == 0
