import assert from "node:assert/strict";
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
    assert.equal(SERVER_KEYS.length, 29);
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
