import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  buildCommandLine,
  describeCommandLine,
  SERVER_DEFAULTS,
  SERVER_KEYS,
  substitute,
  Substitutions,
  toLaunchSettings,
  toServerSettings,
} from "../config";

const subs: Substitutions = { workspaceFolder: "/ws", userHome: "/home/me", env: { VENV: "/opt/venv" } };
const reader = (obj: Record<string, unknown>) => (key: string) => obj[key];

describe("toServerSettings", () => {
  it("sends every server key with its default when nothing is set", () => {
    const s = toServerSettings(reader({}));
    assert.deepEqual(s, SERVER_DEFAULTS);
    assert.equal(SERVER_KEYS.length, 55);
  });

  it("takes graphMemory as auto or a whole number of MB, else the default", () => {
    const g = (v: unknown) => toServerSettings(reader({ graphMemory: v })).graphMemory;
    assert.equal(g("auto"), "auto");
    assert.equal(g(512), 512);
    assert.equal(g(0), 0);
    for (const bad of [-1, 1.5, "lots", "", true, null]) {
      assert.equal(g(bad), "auto", String(bad));
    }
  });

  it("passes user values through and leaves client-only keys out", () => {
    const s = toServerSettings(
      reader({
        arModel: "/models/ar",
        dllmModel: "/models/dllm",
        device: "cpu",
        models: "dllm",
        steps: 4,
        maxNewTokens: 8,
        dllmLengths: [4],
        temperature: 0,
        enabled: false,
        "server.command": ["x"],
        "trace.server": "verbose",
        languages: ["go"],
      }),
    );
    assert.equal(s.arModel, "/models/ar");
    assert.equal(s.dllmModel, "/models/dllm");
    assert.equal(s.device, "cpu");
    assert.equal(s.models, "dllm");
    assert.equal(s.steps, 4);
    assert.equal(s.maxNewTokens, 8);
    assert.deepEqual(s.dllmLengths, [4]);
    assert.equal(s.temperature, 0);
    assert.equal(s.enabled, false);
    assert.deepEqual(Object.keys(s).sort(), [...SERVER_KEYS].sort());
  });

  it("maps empty nullable values to null so the server picks its own", () => {
    const s = toServerSettings(reader({ scorerModel: "", topK: 0, dllmLength: null, maskToken: "" }));
    assert.equal(s.scorerModel, null);
    assert.equal(s.topK, null);
    assert.equal(s.dllmLength, null);
    assert.equal(s.maskToken, null);
    const t = toServerSettings(reader({ scorerModel: "/m/s", topK: 20, dllmLength: 16, maskToken: "<M>" }));
    assert.deepEqual([t.scorerModel, t.topK, t.dllmLength, t.maskToken], ["/m/s", 20, 16, "<M>"]);
  });

  it("maps the speed options: null/0 to null, out-of-range values to the default", () => {
    const s = toServerSettings(reader({ dllmThreshold: 0, dllmStepsPerToken: "", dllmCacheRefresh: -1, profile: "fast" }));
    assert.deepEqual([s.dllmThreshold, s.dllmStepsPerToken, s.dllmCacheRefresh, s.profile], [null, null, 0, "editor"]);
    const t = toServerSettings(reader({ dllmThreshold: 1.5, dllmStepsPerToken: -2, dllmCacheRefresh: 2.5, scoreReuse: "no" }));
    assert.deepEqual([t.dllmThreshold, t.dllmStepsPerToken, t.dllmCacheRefresh, t.scoreReuse], [null, null, 0, true]);
    const u = toServerSettings(
      reader({ dllmThreshold: 0.9, dllmStepsPerToken: 0.5, dllmCacheRefresh: 8, scoreReuse: false, profile: "exact" }),
    );
    assert.deepEqual(
      [u.dllmThreshold, u.dllmStepsPerToken, u.dllmCacheRefresh, u.scoreReuse, u.profile],
      [0.9, 0.5, 8, false, "exact"],
    );
  });

  it("falls back to defaults for values of the wrong type or outside an enum", () => {
    const s = toServerSettings(
      reader({ steps: "many", alg: "fastest", models: "all", dllmLengths: [8, -1], enabled: "yes", device: " " }),
    );
    assert.equal(s.steps, SERVER_DEFAULTS.steps);
    assert.equal(s.alg, "p2");
    assert.equal(s.models, "both");
    assert.deepEqual(s.dllmLengths, [8, 16, 32]);
    assert.equal(s.enabled, true);
    assert.equal(s.device, "auto");
  });

  it("passes the project-context keys, the exclude globs only as a list of strings", () => {
    const s = toServerSettings(reader({ projectContext: false, contextExclude: ["*.md", "build/"], contextTotalTokens: 2048 }));
    assert.deepEqual([s.projectContext, s.contextExclude, s.contextTotalTokens], [false, ["*.md", "build/"], 2048]);
    assert.deepEqual(toServerSettings(reader({ contextExclude: "*.md" })).contextExclude, []);
    assert.deepEqual(toServerSettings(reader({ contextExclude: ["a", 3] })).contextExclude, []);
  });

  it("does not share the default list object between calls", () => {
    const a = toServerSettings(reader({}));
    a.dllmLengths.push(99);
    assert.deepEqual(toServerSettings(reader({})).dllmLengths, [8, 16, 32]);
  });
});

describe("buildCommandLine", () => {
  it("defaults to the fim-lsp console script", () => {
    assert.deepEqual(buildCommandLine({ command: [], pythonPath: "", extraArgs: [] }, subs), {
      command: "fim-lsp",
      args: [],
    });
  });

  it("runs `python -m fim_lsp` when a Python interpreter is set", () => {
    const cl = buildCommandLine({ command: [], pythonPath: "${env:VENV}/bin/python", extraArgs: ["--log-level", "debug"] }, subs);
    assert.deepEqual(cl, { command: "/opt/venv/bin/python", args: ["-m", "fim_lsp", "--log-level", "debug"] });
  });

  it("prefers an explicit command over the interpreter and appends extra args", () => {
    const cl = buildCommandLine(
      { command: ["~/bin/fim-lsp", "--device", "cpu"], pythonPath: "/usr/bin/python3", extraArgs: ["--ar-model", "${workspaceFolder}/ar"] },
      subs,
    );
    assert.deepEqual(cl, { command: "/home/me/bin/fim-lsp", args: ["--device", "cpu", "--ar-model", "/ws/ar"] });
  });

  it("ignores blank entries", () => {
    const cl = buildCommandLine({ command: ["", "  "], pythonPath: "   ", extraArgs: [""] }, subs);
    assert.deepEqual(cl, { command: "fim-lsp", args: [] });
  });

  it("reads launch settings defensively", () => {
    const l = toLaunchSettings(reader({ "server.command": ["a", 3, "b"], "server.pythonPath": 7, "server.extraArgs": "x" }));
    assert.deepEqual(l, { command: ["a", "b"], pythonPath: "", extraArgs: [] });
  });
});

describe("substitute and describe", () => {
  it("expands variables and a leading tilde only", () => {
    assert.equal(substitute("~/x/~", subs), "/home/me/x/~");
    assert.equal(substitute("${userHome}/m", subs), "/home/me/m");
    assert.equal(substitute("${env:NOPE}x", subs), "x");
    assert.equal(substitute("${workspaceFolder}", { userHome: "/h", env: {} }), "${workspaceFolder}");
  });

  it("quotes arguments with spaces", () => {
    assert.equal(describeCommandLine({ command: "/a b/python", args: ["-m", "fim_lsp"] }), '"/a b/python" -m fim_lsp');
  });
});

describe("package.json", () => {
  it("contributes every server key as fimLsp.<key> with the server's default", () => {
    // out/test/ -> package root
    const pkg = JSON.parse(readFileSync(join(__dirname, "..", "..", "package.json"), "utf8"));
    const props = pkg.contributes.configuration.properties as Record<string, { default: unknown }>;
    for (const key of SERVER_KEYS) {
      assert.ok(props[`fimLsp.${key}`], `fimLsp.${key} missing`);
      assert.deepEqual(props[`fimLsp.${key}`].default, SERVER_DEFAULTS[key], key);
    }
    // Client commands must not clash with the server's own executeCommand ids.
    const ids = (pkg.contributes.commands as { command: string }[]).map((c) => c.command);
    assert.ok(ids.every((id) => !id.startsWith("fimLsp.")));
  });
});

// The server is the source of truth: package.json must declare exactly its keys, with its defaults.
// Run from the repository root (out/test/ -> editors/vscode/ -> editors/ -> root) so this checkout's
// fim_lsp is the one compared. Skipped when no Python can import it (set FIM_LSP_PYTHON to pick the
// interpreter).
const python = process.env.FIM_LSP_PYTHON ?? "python3";
const dump = spawnSync(
  python,
  ["-c", "import json; from fim_lsp.server.settings import all_defaults; print(json.dumps(all_defaults()))"],
  { encoding: "utf8", cwd: join(__dirname, "..", "..", "..", "..") },
);
const noServer = dump.status !== 0 ? `no Python with fim_lsp.server.settings (${python})` : false;

describe("package.json against the server's all_defaults()", { skip: noServer }, () => {
  it("declares exactly the server's keys with equal defaults", () => {
    const server = JSON.parse(dump.stdout) as Record<string, unknown>;
    const pkg = JSON.parse(readFileSync(join(__dirname, "..", "..", "package.json"), "utf8"));
    const props = pkg.contributes.configuration.properties as Record<string, { default: unknown }>;
    const clientOnly = (k: string) => k.startsWith("server.") || k.startsWith("trace.") || k === "languages";
    const declared = Object.keys(props)
      .map((k) => k.replace(/^fimLsp\./, ""))
      .filter((k) => !clientOnly(k));
    assert.deepEqual([...declared].sort(), Object.keys(server).sort());
    for (const [key, value] of Object.entries(server)) {
      assert.deepEqual(props[`fimLsp.${key}`].default, value, key);
    }
    assert.deepEqual([...SERVER_KEYS].sort(), Object.keys(server).sort());
    assert.deepEqual(toServerSettings(reader({})), server);
  });
});
