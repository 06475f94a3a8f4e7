// The extension's settings mapping and candidate formatting against the real fim-lsp server
// with tiny random-weight checkpoints. Skipped when no Python can import fim_lsp
// (set FIM_LSP_PYTHON to pick the interpreter).
import assert from "node:assert/strict";
import { ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import {
  createProtocolConnection,
  ProtocolConnection,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-languageserver-protocol/node";
import { buildCommandLine, toServerSettings } from "../config";
import { candidatePicks, CandidatesResult, ServerStatus, statusView } from "../present";

const python = process.env.FIM_LSP_PYTHON ?? "python3";
const probe = spawnSync(python, ["-c", "import fim_lsp.server, fim_lsp.tiny"], { encoding: "utf8" });
const skip = probe.status !== 0 ? `no Python with fim_lsp.server (${python})` : false;

describe("against the real server", { skip, timeout: 120_000 }, () => {
  let dir: string;
  let proc: ChildProcess;
  let conn: ProtocolConnection;
  const statuses: ServerStatus[] = [];
  const errors: string[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "fim-lsp-vscode-"));
    const made = spawnSync(python, ["-m", "fim_lsp.tiny", dir], { encoding: "utf8" });
    assert.equal(made.status, 0, made.stderr);
    const cl = buildCommandLine({ command: [], pythonPath: python, extraArgs: [] }, { userHome: "/", env: {} });
    proc = spawn(cl.command, cl.args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, HF_HUB_OFFLINE: "1" } });
    conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    conn.onNotification("fimLsp/status", (p: ServerStatus) => {
      statuses.push(p);
    });
    conn.onNotification("window/showMessage", (p: { type: number; message: string }) => {
      if (p.type <= 2) errors.push(p.message);
    });
    conn.listen();
  });

  after(() => {
    conn?.dispose();
    proc?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it("accepts the mapped settings, completes, and lists both candidates", async () => {
    const settings = toServerSettings(
      (key) =>
        ({
          arModel: join(dir, "ar"),
          dllmModel: join(dir, "dllm"),
          device: "cpu",
          steps: 4,
          maxNewTokens: 8,
          dllmLengths: [4],
          waitForModelsMs: 60000,
        })[key],
    );
    const init = (await conn.sendRequest("initialize", {
      processId: process.pid,
      rootUri: null,
      capabilities: { textDocument: { inlineCompletion: { dynamicRegistration: false } } },
      initializationOptions: settings,
    })) as { capabilities: Record<string, unknown> };
    assert.ok(init.capabilities.inlineCompletionProvider, "inline completion not advertised");
    await conn.sendNotification("initialized", {});
    await conn.sendNotification("workspace/didChangeConfiguration", { settings: { fimLsp: settings } });

    const uri = pathToFileURL(join(dir, "a.py")).toString();
    const text = "def add(a, b):\n    return ";
    await conn.sendNotification("textDocument/didOpen", { textDocument: { uri, languageId: "python", version: 1, text } });
    const res = (await conn.sendRequest("textDocument/inlineCompletion", {
      textDocument: { uri },
      position: { line: 1, character: 11 },
      context: { triggerKind: 1 },
    })) as { items: { insertText: string }[] } | { insertText: string }[] | null;
    const items = Array.isArray(res) ? res : (res?.items ?? []);
    assert.ok(items.length > 0, "no inline completion");

    const shown = (await conn.sendRequest("workspace/executeCommand", {
      command: "fimLsp.showCandidates",
      arguments: [],
    })) as CandidatesResult;
    assert.equal(shown.uri, uri);
    assert.equal(shown.completion, items[0].insertText);
    const picks = candidatePicks(shown);
    assert.deepEqual(picks.map((p) => p.model).sort(), ["dllm", "qwen"]);
    for (const p of picks) {
      assert.match(p.description, /perplexity \d+\.\d{3}/);
    }
    assert.ok(picks.some((p) => p.label.includes("$(star-full)") && p.model === shown.winner));

    // What "fim-lsp: Show prompt" opens: the text of the tokens each model was given.
    const prompt = (await conn.sendRequest("workspace/executeCommand", {
      command: "fimLsp.showPrompt",
      arguments: [],
    })) as { uri: string; qwen: string | null; dllm: string | null; context: unknown[] };
    assert.equal(prompt.uri, uri);
    assert.ok(prompt.qwen?.includes(`<|fim_prefix|>${text}<|fim_suffix|>`), String(prompt.qwen));
    assert.ok(prompt.dllm?.startsWith(text), String(prompt.dllm));
    assert.deepEqual(prompt.context, []); // no workspace folder: the local window alone

    assert.deepEqual(errors, [], "server rejected a mapped setting");
    const last = statuses.at(-1);
    assert.ok(last, "no fimLsp/status notification");
    assert.equal(last.state, "ready");
    assert.match(statusView(last, true).text, /FIM ready( \d+ ms)?$/);
    await conn.sendRequest("shutdown");
    await conn.sendNotification("exit");
  });
});
