"""LSP feature handlers: each one translates between protocol types and the completion service."""
from __future__ import annotations

import asyncio
from typing import Any

from lsprotocol import types

from .hover import candidates_json, candidates_markdown, prompt_json
from .server import CMD_ACCEPTED, CMD_PROMPT, CMD_SHOW, CMD_STATS, FimLanguageServer, guarded, reconfigure_engine
from .service import Offer, accepted_args
from .settings import as_keys

Items = list[types.InlineCompletionItem]


def _range(offer: Offer, cover: int) -> types.Range:
    ctx = offer.ctx
    start = types.Position(line=ctx.line, character=ctx.cursor_column)
    return types.Range(start=start, end=types.Position(line=ctx.line, character=ctx.range_end_column(cover)))


def _command(offer: Offer, cand: Any) -> types.Command:
    return types.Command(title="fim-lsp: accepted", command=CMD_ACCEPTED, arguments=[accepted_args(offer, cand)])


async def _complete(ls: FimLanguageServer, uri: str, pos: types.Position) -> Offer | None:
    return await ls.service.complete(uri, pos.line, pos.character, ls.document(uri), ls.settings)


async def _watch_files(ls: FimLanguageServer) -> None:
    """Ask the client to send file events for the workspace (the index follows files changed outside
    the editor), where it lets a server register for them."""
    ws = ls.client_capabilities.workspace
    watched = ws.did_change_watched_files if ws else None
    if not (watched and watched.dynamic_registration):
        return  # saves still update the index
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
            id="fim-lsp-watched-files", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(
                watchers=[types.FileSystemWatcher(glob_pattern="**/*")]))]))
    except Exception:  # noqa: BLE001 - without watching, saves still update the index
        pass


def register(ls: FimLanguageServer) -> None:
    background: set[asyncio.Task[Any]] = set()  # keeps fire-and-forget tasks alive until they finish

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    @ls.feature(types.INITIALIZE)
    def on_initialize(ls: FimLanguageServer, params: types.InitializeParams) -> None:
        ls.log_handler.bind(asyncio.get_running_loop())
        new = ls.apply_settings(params.initialization_options or {}, "initializationOptions")
        if new is not None:
            ls.engine.reconfigure(new)  # nothing is loaded yet: just take the config
        ls.update_roots()

    @ls.feature(types.INITIALIZED)
    def on_initialized(ls: FimLanguageServer, params: types.InitializedParams) -> None:
        ls.initialized = True
        spawn(ls.load_models())
        ls.start_indexing()
        spawn(_watch_files(ls))

    @ls.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def on_folders(ls: FimLanguageServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
        ls.update_roots()

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def on_open(ls: FimLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.document_opened(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: FimLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.document_changed(params.text_document.uri, list(params.content_changes))

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def on_save(ls: FimLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.file_changed(params.text_document.uri)

    @ls.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def on_watched(ls: FimLanguageServer, params: types.DidChangeWatchedFilesParams) -> None:
        for event in params.changes:
            ls.file_changed(event.uri, deleted=event.type == types.FileChangeType.Deleted)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: FimLanguageServer, params: types.DidChangeConfigurationParams) -> None:
        new = ls.apply_settings(params.settings, "didChangeConfiguration")
        if new is not None:
            spawn(reconfigure_engine(ls, new))

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: FimLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.worker.cancel_key(params.text_document.uri)
        ls.document_closed(params.text_document.uri)

    @ls.feature(types.SHUTDOWN)
    def on_shutdown(ls: FimLanguageServer, params: Any = None) -> None:
        ls.worker.stop()
        ls.project.close()

    @ls.feature(types.EXIT)
    def on_exit(ls: FimLanguageServer, params: Any = None) -> None:
        # pygls closes stdout and ends the loop after this; its own exit status is swallowed by
        # start_io, so serve_main returns ours. Nothing may be written once stdout is closed.
        ls.exit_code = 0 if ls.protocol.shut_down else 1
        ls.protocol.closed = True

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @guarded(lambda: types.InlineCompletionList(items=[]))
    async def inline_completion(ls: FimLanguageServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        offer = await _complete(ls, params.text_document.uri, params.position)
        if offer is None:
            return types.InlineCompletionList(items=[])
        automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
        chosen = offer.inserts[:1] if automatic else offer.inserts
        return types.InlineCompletionList(items=[
            types.InlineCompletionItem(insert_text=ins.text, range=_range(offer, ins.cover),
                                       command=_command(offer, cand))
            for cand, ins in chosen])

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    @guarded(lambda: types.CompletionList(is_incomplete=True, items=[]))
    async def completion(ls: FimLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        offer = await _complete(ls, params.text_document.uri, params.position)
        # is_incomplete: the client asks again as the user types, and typing-through hits the cache.
        if offer is None:
            return types.CompletionList(is_incomplete=True, items=[])
        cand, ins = offer.inserts[0]
        first = ins.text.replace("\r\n", "\n").split("\n", 1)[0].strip() or ins.text.strip()
        label = first if len(first) <= 60 else first[:57] + "..."
        fence = "```"
        return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
            label=label, kind=types.CompletionItemKind.Snippet, detail=f"fim-lsp ({cand.model})",
            documentation=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                              value=f"{fence}\n{ins.text}\n{fence}"),
            text_edit=types.TextEdit(range=_range(offer, ins.cover), new_text=ins.text),
            sort_text="0", preselect=True, command=_command(offer, cand))])

    @ls.feature(types.TEXT_DOCUMENT_HOVER)
    @guarded(lambda: None)
    async def hover(ls: FimLanguageServer, params: types.HoverParams) -> types.Hover | None:
        last = ls.service.last
        if last is None or last.uri != params.text_document.uri or params.position.line != last.ctx.line:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                                        value=candidates_markdown(last, ls.engine.graph_stats())))

    @ls.command(CMD_SHOW)
    @guarded(lambda: None)
    async def show_candidates(ls: FimLanguageServer, *args: Any) -> dict[str, Any] | None:
        return candidates_json(ls.service.last) if ls.service.last is not None else None

    @ls.command(CMD_PROMPT)
    @guarded(lambda: None)
    async def show_prompt(ls: FimLanguageServer, *args: Any) -> dict[str, Any] | None:
        if ls.service.last is None:
            return None
        engine = ls.engine
        mask = engine.dllm.tokenizer.decode([engine.mask_id]) if engine.dllm is not None and engine.mask_id is not None \
            else "<|mask|>"
        return prompt_json(ls.service.last, mask)

    @ls.command(CMD_STATS)
    @guarded(lambda: {})
    async def stats(ls: FimLanguageServer, *args: Any) -> dict[str, Any]:
        out = ls.stats.to_dict()
        out.update({"state": ls.loader.state, "models": ls.engine.available,
                    "loadErrors": dict(ls.engine.load_errors), "cacheEntries": len(ls.cache),
                    "workerBusy": ls.worker.busy, "graphs": ls.engine.graph_stats(),
                    "settings": as_keys(ls.settings, ls.engine.config, ls.context_settings),
                    "project": ls.project.stats()})
        return out

    @ls.command(CMD_ACCEPTED)
    @guarded(lambda: None)
    async def accepted(ls: FimLanguageServer, *args: Any) -> None:
        info = args[0] if args and isinstance(args[0], dict) else {}
        model = info.get("model")
        if isinstance(model, str):
            ls.stats.acceptances[model] += 1
        return None
