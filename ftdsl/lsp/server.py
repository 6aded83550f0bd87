"""The language server (`ftdsl lsp`, stdio, pygls 2): wires the LSP requests to the modules.

Diagnostics come from the same front end as `lint` (`compile_pipeline(path, text=buffer)`), so
codes, messages and spans are the ones the CLI prints; everything else reads the tolerant scan
(`scan.py`) and the schema. Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsprotocol import types as T
from lsprotocol.converters import get_converter
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

import ftdsl
from ftdsl.lsp import actions, completion, hover, navigation, tokens
from ftdsl.lsp.positions import LineIndex

_CONVERTER = get_converter()
_KIND = {"keyword": T.CompletionItemKind.Keyword, "property": T.CompletionItemKind.Property,
         "field": T.CompletionItemKind.Field, "function": T.CompletionItemKind.Function,
         "enum": T.CompletionItemKind.EnumMember, "value": T.CompletionItemKind.Value,
         "reference": T.CompletionItemKind.Reference, "variable": T.CompletionItemKind.Variable}


class FtdslServer(LanguageServer):
    def __init__(self):
        super().__init__("ftdsl", ftdsl.__version__, text_document_sync_kind=T.TextDocumentSyncKind.Full)
        self.texts: dict[str, str] = {}  # open documents by URI
        self.pending: dict[str, object] = {}  # URI -> the scheduled check (an asyncio handle)
        self.cost: dict[str, float] = {}  # URI -> seconds its last check took

    # --- documents --------------------------------------------------------------------------

    def path_of(self, uri: str) -> Path:
        p = to_fs_path(uri) if uri.startswith("file:") else None
        return Path(p).resolve() if p else Path.cwd() / "untitled.ftp"

    def index(self, uri: str) -> LineIndex:
        enc = str(getattr(self.workspace.position_encoding, "value", self.workspace.position_encoding) or "utf-16")
        return LineIndex(self.texts.get(uri, ""), enc)

    def read(self, path: Path) -> str | None:
        uri = from_fs_path(str(path))
        if uri in self.texts:
            return self.texts[uri]
        from ftdsl.syntax.parser import read_source

        # The front end's reader: a `use` of a FIFO or a device is refused, never read (FTP004).
        text, _ = read_source(path)
        return text

    def sources(self, uri: str) -> list[navigation.Source]:
        return navigation.load(self.path_of(uri), self.texts.get(uri, ""), self.read)

    def use_locator(self, uri: str):
        """A function: a file's path -> the (start, end) offsets of the `use` in this document
        through which it is included (directly or further down), or None."""
        srcs = self.sources(uri)
        if not srcs:
            return None
        via: dict[Path, tuple[int, int]] = {}
        for tok in navigation.uses(srcs[0].scan.toks):
            target = navigation.use_target(srcs[0].path, tok)
            if target is None:
                continue
            for src in navigation.load(target, self.read(target) or "", self.read):
                via.setdefault(src.path, (tok.start, tok.end))
        return lambda p: via.get(p.resolve())

    def dependents(self, uri: str) -> list[str]:
        """The other open documents that `use` this one (directly or further down)."""
        path = self.path_of(uri)
        return [u for u in self.texts if u != uri and any(s.path == path for s in self.sources(u)[1:])]

    def offset(self, uri: str, pos: T.Position) -> int:
        return self.index(uri).offset(pos.line, pos.character)

    def rng(self, index: LineIndex, start: int, end: int) -> T.Range:
        (l0, c0), (l1, c1) = index.offset_position(start), index.offset_position(end)
        return T.Range(T.Position(l0, c0), T.Position(l1, c1))

    def schedule(self, uri: str, version: int | None) -> None:
        """Check the document once the messages already received are handled: a burst of
        keystrokes that arrived while a long file was being checked costs one more check, not one
        per keystroke (handlers run on the event loop, in order; a newer change cancels this)."""
        import asyncio

        old = self.pending.pop(uri, None)
        if old is not None:
            old.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the server's loop (tests of the handlers)
            return self.validate(uri, version)
        # pygls reads one message per turn of the loop: a short wait lets the messages already
        # buffered (typed during the last check) replace this one first. 5 ms plus a tenth of
        # the last check's time, so small files stay immediate.
        delay = min(0.005 + self.cost.get(uri, 0.0) / 10, 0.05)
        self.pending[uri] = loop.call_later(delay, self._scheduled, uri, version)

    def _scheduled(self, uri: str, version: int | None) -> None:
        import time

        self.pending.pop(uri, None)
        if uri in self.texts:
            t0 = time.perf_counter()
            self.validate(uri, version)
            self.cost[uri] = time.perf_counter() - t0

    def validate(self, uri: str, version: int | None = None) -> None:
        from ftdsl.frontend import compile_pipeline

        path = self.path_of(uri)
        text = self.texts.get(uri, "")
        if text.startswith("\ufeff"):  # a byte order mark, as `lint` strips it; a space keeps the columns
            text = " " + text[1:]
        try:
            compiled = compile_pipeline(path, text=text)
            items = actions.to_lsp(compiled.diagnostics, path, self.index(uri), self.use_locator(uri))
        except Exception as e:  # noqa: BLE001 - an editor keeps working; the failure is shown, not raised
            items = [{"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                      "severity": 1, "source": "ftdsl", "code": "FTP901",
                      "message": f"internal error while checking this file: {type(e).__name__}: {e} "
                                 "(this is a bug; `ftdsl lint FILE --debug` shows the traceback)"}]
        diags = _CONVERTER.structure(items, list[T.Diagnostic])
        self.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=diags, version=version))


server = FtdslServer()


@server.feature(T.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FtdslServer, params: T.DidOpenTextDocumentParams):
    ls.texts[params.text_document.uri] = params.text_document.text
    ls.schedule(params.text_document.uri, params.text_document.version)


@server.feature(T.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FtdslServer, params: T.DidChangeTextDocumentParams):
    uri = params.text_document.uri
    for change in params.content_changes:  # full sync: each change is the whole text
        ls.texts[uri] = change.text
    ls.schedule(uri, params.text_document.version)


@server.feature(T.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: FtdslServer, params: T.DidSaveTextDocumentParams):
    if params.text_document.uri in ls.texts:
        ls.schedule(params.text_document.uri, None)
        # The front end reads `use`d files from disk: files that include this one change now.
        for dep in ls.dependents(params.text_document.uri):
            ls.schedule(dep, None)


@server.feature(T.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FtdslServer, params: T.DidCloseTextDocumentParams):
    ls.texts.pop(params.text_document.uri, None)
    old = ls.pending.pop(params.text_document.uri, None)
    if old is not None:
        old.cancel()
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


@server.feature(T.TEXT_DOCUMENT_HOVER)
def on_hover(ls: FtdslServer, params: T.HoverParams):
    uri = params.text_document.uri
    found = hover.hover_at(ls.texts.get(uri, ""), ls.offset(uri, params.position),
                           navigation.kinds(ls.sources(uri)))
    if found is None:
        return None
    md, tok = found
    return T.Hover(T.MarkupContent(T.MarkupKind.Markdown, md), ls.rng(ls.index(uri), tok.start, tok.end))


@server.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=[".", "=", "(", "["]))
def on_completion(ls: FtdslServer, params: T.CompletionParams):
    uri = params.text_document.uri
    kinds = navigation.kinds(ls.sources(uri))
    blocks = {n: k for n, k in kinds.items() if k != "param"}
    params_ = tuple(n for n, k in kinds.items() if k == "param")
    items = completion.complete(ls.texts.get(uri, ""), ls.offset(uri, params.position), blocks, params_)
    return T.CompletionList(is_incomplete=False, items=[
        T.CompletionItem(label=i.label, kind=_KIND.get(i.kind), detail=i.detail or None,
                         documentation=T.MarkupContent(T.MarkupKind.Markdown, i.doc) if i.doc else None,
                         insert_text=i.insert) for i in items])


@server.feature(T.TEXT_DOCUMENT_DEFINITION)
def on_definition(ls: FtdslServer, params: T.DefinitionParams):
    uri = params.text_document.uri
    srcs = ls.sources(uri)
    found = navigation.definition(srcs, ls.offset(uri, params.position))
    if found is None:
        return None
    path, tok = found
    target_uri = from_fs_path(str(path))
    if tok is None:
        return T.Location(target_uri, T.Range(T.Position(0, 0), T.Position(0, 0)))
    src = next(s for s in srcs if s.path == path)
    return T.Location(target_uri, ls.rng(LineIndex(src.text, ls.index(uri).encoding), tok.start, tok.end))


@server.feature(T.TEXT_DOCUMENT_PREPARE_RENAME)
def on_prepare_rename(ls: FtdslServer, params: T.PrepareRenameParams):
    uri = params.text_document.uri
    try:
        tok = navigation.rename_target(ls.sources(uri), ls.offset(uri, params.position))
    except navigation.RenameError:
        return None
    return ls.rng(ls.index(uri), tok.start, tok.end)


@server.feature(T.TEXT_DOCUMENT_RENAME)
def on_rename(ls: FtdslServer, params: T.RenameParams):
    from pygls.exceptions import JsonRpcInvalidParams

    uri = params.text_document.uri
    srcs = ls.sources(uri)
    seen = {s.path for s in srcs}
    for dep in ls.dependents(uri):  # open files that include this one refer to its blocks too
        for src in ls.sources(dep):
            if src.path not in seen:
                seen.add(src.path)
                srcs.append(src)
    try:
        edits = navigation.rename(srcs, ls.offset(uri, params.position), params.new_name)
    except navigation.RenameError as e:
        raise JsonRpcInvalidParams(str(e)) from None
    enc = ls.index(uri).encoding
    changes = {}
    for src in srcs:
        if src.path in edits:
            idx = LineIndex(src.text, enc)
            changes[from_fs_path(str(src.path))] = [T.TextEdit(ls.rng(idx, t.start, t.end), params.new_name)
                                                    for t in edits[src.path]]
    return T.WorkspaceEdit(changes=changes)


@server.feature(T.TEXT_DOCUMENT_CODE_ACTION,
                T.CodeActionOptions(code_action_kinds=[T.CodeActionKind.QuickFix]))
def on_code_action(ls: FtdslServer, params: T.CodeActionParams):
    sent = _CONVERTER.unstructure(params.context.diagnostics, list[T.Diagnostic])
    return _CONVERTER.structure(actions.code_actions(params.text_document.uri, sent), list[T.CodeAction])


@server.feature(T.TEXT_DOCUMENT_FORMATTING)
def on_formatting(ls: FtdslServer, params: T.DocumentFormattingParams):
    from ftdsl.syntax.format import format_source

    uri = params.text_document.uri
    text = ls.texts.get(uri, "")
    out, _ = format_source(text, os.fspath(ls.path_of(uri)))
    if out is None or out == text:
        return []  # syntax errors (shown as diagnostics) or already formatted
    idx = ls.index(uri)
    end = idx.end()
    return [T.TextEdit(T.Range(T.Position(0, 0), T.Position(*end)), out)]


@server.feature(T.TEXT_DOCUMENT_SEMANTIC_TOKENS_FULL,
                T.SemanticTokensLegend(token_types=tokens.TYPES, token_modifiers=tokens.MODIFIERS))
def on_semantic_tokens(ls: FtdslServer, params: T.SemanticTokensParams):
    uri = params.text_document.uri
    data = tokens.encode(ls.texts.get(uri, ""), ls.index(uri), navigation.kinds(ls.sources(uri)))
    return T.SemanticTokens(data=data)


def serve() -> None:
    server.start_io()
