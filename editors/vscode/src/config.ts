// Pure logic shared by the extension and its unit tests: no `vscode` import here, so the
// tests run under plain `node --test`.

/** Server configuration keys (camelCase, as the server reads them) and their defaults. */
export const SERVER_DEFAULTS = {
  arModel: "Qwen/Qwen2.5-Coder-0.5B",
  dllmModel: "fredzzp/open-dcoder-0.5B",
  scorerModel: null as string | null,
  models: "both",
  device: "auto",
  dtype: "auto",
  temperature: 0.6,
  topP: 0.95,
  topK: null as number | null,
  seed: 0,
  maxNewTokens: 128,
  steps: 64,
  alg: "p2",
  algTemp: 0,
  eps: 0.001,
  dllmLength: null as number | null,
  dllmLengths: [8, 16, 32] as number[],
  dllmLengthsSingleLine: [8, 16] as number[],
  maskToken: null as string | null,
  dllmThreshold: null as number | null,
  dllmCacheRefresh: 0,
  dllmStepsPerToken: null as number | null,
  scoreMode: "fim",
  scoreReuse: true,
  prefixReuse: true,
  profile: "editor",
  compile: "auto",
  overlap: "auto",
  graphMemory: "auto" as string | number,
  decodeWeights: "auto",
  enabled: true,
  prefixLines: 64,
  suffixLines: 16,
  maxPrefixTokens: 1024,
  maxSuffixTokens: 256,
  multiline: "auto",
  debounceMs: 0,
  waitForModelsMs: 10000,
  cacheSize: 256,
  logLevel: "info",
  projectContext: true,
  contextOpenFiles: true,
  contextSameFile: true,
  contextEdits: true,
  contextDefinitions: true,
  contextExclude: [] as string[],
  contextMaxFileBytes: 1000000,
  contextChunkLines: 32,
  contextMaxChunks: 24,
  contextDeadlineMs: 30,
  contextTotalTokens: 4096,
  dllmContextTokens: 512,
  indexMaxFiles: 10000,
  indexMaxReadBytes: 100000000,
  indexMaxMemoryBytes: 64000000,
};

export type ServerSettings = { -readonly [K in keyof typeof SERVER_DEFAULTS]: (typeof SERVER_DEFAULTS)[K] };
export type ServerKey = keyof ServerSettings;
export const SERVER_KEYS = Object.keys(SERVER_DEFAULTS) as ServerKey[];

const ENUMS: Partial<Record<ServerKey, readonly string[]>> = {
  models: ["both", "qwen", "dllm"],
  alg: ["origin", "maskgit_plus", "topk_margin", "entropy", "p2"],
  scoreMode: ["fim", "plain"],
  profile: ["exact", "editor"],
  compile: ["auto", "on", "off"],
  overlap: ["auto", "on", "off"],
  decodeWeights: ["auto", "int8", "exact"],
  logLevel: ["debug", "info", "warning", "error"],
  multiline: ["auto", "always", "never"],
};

/** Keys where an empty string or 0 in the settings UI means "let the server decide". */
const NULLABLE = new Set<ServerKey>([
  "scorerModel",
  "topK",
  "dllmLength",
  "maskToken",
  "dllmThreshold",
  "dllmStepsPerToken",
]);

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** Reads one key of the `fimLsp` settings section (VS Code's `WorkspaceConfiguration.get`). */
export type SettingsReader = (key: string) => unknown;

/**
 * The `fimLsp` object sent to the server (initializationOptions and didChangeConfiguration).
 * Client-only keys (`server.*`, `languages`, `trace.*`) are left out; a value of the wrong type
 * falls back to the default so one typo in settings.json cannot stop the server from starting.
 */
export function toServerSettings(get: SettingsReader): ServerSettings {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    out[key] = normalize(key, get(key));
  }
  return out as ServerSettings;
}

function normalize(key: ServerKey, value: unknown): unknown {
  const def = SERVER_DEFAULTS[key] as unknown;
  if (value === undefined) {
    return Array.isArray(def) ? [...def] : def;
  }
  if (NULLABLE.has(key) && (value === null || value === "" || value === 0)) {
    return null;
  }
  if (NULLABLE.has(key)) {
    if (key === "topK" || key === "dllmLength") {
      return Number.isInteger(value) && (value as number) > 0 ? value : null;
    }
    if (key === "dllmThreshold") {
      return isNumber(value) && value > 0 && value <= 1 ? value : null;
    }
    if (key === "dllmStepsPerToken") {
      return isNumber(value) && value > 0 ? value : null;
    }
    return typeof value === "string" ? value : null;
  }
  if (key === "contextExclude") {
    const ok = Array.isArray(value) && value.every((v) => typeof v === "string");
    return ok ? [...(value as string[])] : [];
  }
  if (Array.isArray(def)) {
    const ok = Array.isArray(value) && value.length > 0 && value.every((v) => Number.isInteger(v) && v > 0);
    return ok ? [...(value as number[])] : [...def];
  }
  if (key === "graphMemory") {
    return value === "auto" || (Number.isInteger(value) && (value as number) >= 0) ? value : def;
  }
  if (key === "dllmCacheRefresh") {
    return Number.isInteger(value) && (value as number) >= 0 ? value : def;
  }
  if (typeof def === "number") {
    return isNumber(value) ? value : def;
  }
  if (typeof def === "boolean") {
    return typeof value === "boolean" ? value : def;
  }
  if (typeof def === "string") {
    if (typeof value !== "string" || value.trim() === "") {
      return def;
    }
    const allowed = ENUMS[key];
    return allowed && !allowed.includes(value) ? def : value;
  }
  return value;
}

/** What the extension needs to know to launch the server. */
export interface LaunchSettings {
  command: string[];
  pythonPath: string;
  extraArgs: string[];
}

export interface CommandLine {
  command: string;
  args: string[];
}

/** Variables allowed in paths: `${workspaceFolder}`, `${userHome}`, `${env:NAME}` and a leading `~`. */
export interface Substitutions {
  workspaceFolder?: string;
  userHome: string;
  env: Record<string, string | undefined>;
}

export function substitute(value: string, subs: Substitutions): string {
  let s = value.replace(/\$\{(workspaceFolder|userHome|env:([A-Za-z_][A-Za-z0-9_]*))\}/g, (whole, name, envName) => {
    if (envName) {
      return subs.env[envName] ?? "";
    }
    if (name === "workspaceFolder") {
      return subs.workspaceFolder ?? whole;
    }
    return subs.userHome;
  });
  if (s === "~" || s.startsWith("~/")) {
    s = subs.userHome + s.slice(1);
  }
  return s;
}

/**
 * The server command line: `server.command` if given, else `python -m fim_lsp` with
 * `server.pythonPath`, else the `fim-lsp` console script; `server.extraArgs` go last.
 */
export function buildCommandLine(launch: LaunchSettings, subs: Substitutions): CommandLine {
  const cmd = launch.command.filter((s) => typeof s === "string" && s.trim() !== "").map((s) => substitute(s, subs));
  const extra = launch.extraArgs.filter((s) => typeof s === "string" && s !== "").map((s) => substitute(s, subs));
  if (cmd.length > 0) {
    return { command: cmd[0], args: [...cmd.slice(1), ...extra] };
  }
  const python = launch.pythonPath.trim();
  if (python !== "") {
    return { command: substitute(python, subs), args: ["-m", "fim_lsp", ...extra] };
  }
  return { command: "fim-lsp", args: extra };
}

/** Reads the launch keys, tolerating wrong types from hand-edited settings. */
export function toLaunchSettings(get: SettingsReader): LaunchSettings {
  const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : []);
  const pythonPath = get("server.pythonPath");
  return {
    command: strings(get("server.command")),
    pythonPath: typeof pythonPath === "string" ? pythonPath : "",
    extraArgs: strings(get("server.extraArgs")),
  };
}

/** A shell-style rendering of the command line, for messages. */
export function describeCommandLine(cl: CommandLine): string {
  return [cl.command, ...cl.args].map((a) => (/[\s"'$]/.test(a) ? JSON.stringify(a) : a)).join(" ");
}
