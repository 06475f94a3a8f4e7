// VS Code front end for fim-lsp: starts the server over stdio, forwards the `fimLsp`
// settings, shows model state in the status bar and the competing completions on demand.
import * as os from "node:os";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";
import {
  buildCommandLine,
  CommandLine,
  describeCommandLine,
  ServerSettings,
  Substitutions,
  toLaunchSettings,
  toServerSettings,
} from "./config";
import { CandidatesResult, candidatePicks, ServerStatus, statusView } from "./present";
import { EditsWhileStarting } from "./retrigger";

const SECTION = "fimLsp";

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let lastStatus: ServerStatus | undefined;
let output: vscode.LogOutputChannel;
const editsWhileStarting = new EditsWhileStarting();

function section(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function serverSettings(): ServerSettings {
  const cfg = section();
  return toServerSettings((key) => cfg.get(key));
}

function commandLine(): CommandLine {
  const cfg = section();
  const subs: Substitutions = {
    workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
    userHome: os.homedir(),
    env: process.env,
  };
  return buildCommandLine(toLaunchSettings((key) => cfg.get(key)), subs);
}

function refreshStatus(): void {
  const view = statusView(lastStatus, serverSettings().enabled);
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusItem.command = view.error ? "fim-lsp.restart" : "fim-lsp.showCandidates";
  statusItem.show();
}

function documentSelector(): { scheme: string; language: string }[] {
  const languages = section().get<string[]>("languages") ?? ["python"];
  return languages.flatMap((language) => [
    { scheme: "file", language },
    { scheme: "untitled", language },
  ]);
}

async function startClient(): Promise<void> {
  const cl = commandLine();
  const serverOptions: ServerOptions = { command: cl.command, args: cl.args, transport: TransportKind.stdio };
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(),
    outputChannel: output,
    initializationOptions: () => serverSettings(),
    middleware: {
      workspace: {
        // Pull-style configuration gets the same cleaned-up object as the pushes.
        configuration: async (params, token, next) => {
          const raw = await next(params, token);
          if (!Array.isArray(raw)) {
            return raw;
          }
          return params.items.map((item, i) => (item.section === SECTION ? serverSettings() : raw[i]));
        },
      },
    },
  };
  const c = new LanguageClient("fimLsp", "fim-lsp", serverOptions, clientOptions);
  client = c;
  lastStatus = undefined;
  editsWhileStarting.reset();
  refreshStatus();
  c.onNotification("fimLsp/status", (params: ServerStatus) => {
    const failedNow = params.state === "failed" && lastStatus?.state !== "failed";
    lastStatus = params;
    refreshStatus();
    if (editsWhileStarting.noteState(params.state, vscode.window.activeTextEditor?.document.uri.toString())) {
      void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
    }
    if (failedNow) {
      void vscode.window.showErrorMessage(`fim-lsp: the models failed to load: ${params.message}`, "Show output").then(
        (pick) => pick && output.show(),
      );
    }
  });
  try {
    await c.start();
  } catch (err) {
    client = undefined;
    lastStatus = { state: "failed", message: String(err), models: [], latencyMs: null };
    refreshStatus();
    const msg = err instanceof Error ? err.message : String(err);
    const pick = await vscode.window.showErrorMessage(
      `fim-lsp: the server \`${describeCommandLine(cl)}\` did not start: ${msg}. ` +
        "Set fimLsp.server.command or fimLsp.server.pythonPath.",
      "Open settings",
      "Show output",
    );
    if (pick === "Open settings") {
      void vscode.commands.executeCommand("workbench.action.openSettings", "fimLsp.server");
    } else if (pick === "Show output") {
      output.show();
    }
  }
}

async function stopClient(): Promise<void> {
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop();
    } catch {
      // A server that already died cannot be stopped; nothing else to clean up.
    }
  }
}

async function restart(): Promise<void> {
  await stopClient();
  await startClient();
}

async function showCandidates(): Promise<void> {
  if (!client) {
    void vscode.window.showWarningMessage("fim-lsp: the server is not running");
    return;
  }
  const result = (await client.sendRequest(ExecuteCommandRequest.type, {
    command: "fimLsp.showCandidates",
    arguments: [],
  })) as CandidatesResult | null;
  if (!result || result.candidates.length === 0) {
    void vscode.window.showInformationMessage("fim-lsp: no completion yet; type in a file first");
    return;
  }
  // The quick pick shows each text on one line; the output channel keeps them whole, to copy.
  output.info(`competing completions: ${JSON.stringify(result)}`);
  const picks = candidatePicks(result);
  const chosen = await vscode.window.showQuickPick(picks, {
    title: `Competing completions (winner: ${result.winner ?? "none"}); pick one to insert it`,
    matchOnDetail: true,
  });
  const editor = vscode.window.activeTextEditor;
  if (!chosen || !editor || editor.document.uri.toString() !== result.uri) {
    return;
  }
  const pos = new vscode.Position(result.position.line, result.position.character);
  await editor.edit((b) => b.insert(pos, chosen.text));
}

/** The last completion's prompts (fimLsp.showPrompt), as JSON in an untitled editor beside the code. */
async function showPrompt(): Promise<void> {
  if (!client) {
    void vscode.window.showWarningMessage("fim-lsp: the server is not running");
    return;
  }
  const result = await client.sendRequest(ExecuteCommandRequest.type, { command: "fimLsp.showPrompt", arguments: [] });
  if (!result) {
    void vscode.window.showInformationMessage("fim-lsp: no completion yet; type in a file first");
    return;
  }
  const doc = await vscode.workspace.openTextDocument({ language: "json", content: JSON.stringify(result, null, 2) });
  await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preview: true });
}

async function setEnabled(on: boolean): Promise<void> {
  await section().update("enabled", on, vscode.ConfigurationTarget.Global);
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("fim-lsp", { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("fim-lsp.showCandidates", showCandidates),
    vscode.commands.registerCommand("fim-lsp.showPrompt", showPrompt),
    vscode.commands.registerCommand("fim-lsp.enable", () => setEnabled(true)),
    vscode.commands.registerCommand("fim-lsp.disable", () => setEnabled(false)),
    vscode.commands.registerCommand("fim-lsp.restart", restart),
    vscode.workspace.onDidChangeTextDocument((e) => {
      if (e.contentChanges.length > 0 && vscode.languages.match(documentSelector(), e.document) > 0) {
        editsWhileStarting.noteEdit(e.document.uri.toString());
      }
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) {
        return;
      }
      // A new command line or language list needs a new process; the rest is pushed live.
      if (e.affectsConfiguration(`${SECTION}.server`) || e.affectsConfiguration(`${SECTION}.languages`)) {
        await restart();
        return;
      }
      refreshStatus();
      await client?.sendNotification(DidChangeConfigurationNotification.type, {
        settings: { [SECTION]: serverSettings() },
      });
    }),
  );
  await startClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
