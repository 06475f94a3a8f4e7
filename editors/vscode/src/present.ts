// Pure formatting of server payloads for the status bar and the candidates quick pick
// (no `vscode` import, so it is unit-tested under node).

/** Params of the server's `fimLsp/status` notification. */
export interface ServerStatus {
  state: "loading" | "ready" | "failed";
  message: string;
  models: string[];
  latencyMs: number | null;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** Whether the item should use the error background. */
  error: boolean;
}

export function statusView(status: ServerStatus | undefined, enabled: boolean): StatusView {
  if (!enabled) {
    return { text: "$(circle-slash) FIM off", tooltip: "fim-lsp completions are disabled", error: false };
  }
  if (!status) {
    return { text: "$(sync~spin) FIM starting", tooltip: "fim-lsp: starting the server", error: false };
  }
  const models = status.models.length > 0 ? ` (${status.models.join(", ")})` : "";
  switch (status.state) {
    case "loading":
      return { text: "$(sync~spin) FIM loading", tooltip: `fim-lsp: ${status.message || "loading models"}${models}`, error: false };
    case "failed":
      return { text: "$(error) FIM failed", tooltip: `fim-lsp: ${status.message}\nClick to restart.`, error: true };
    default: {
      const latency = typeof status.latencyMs === "number" ? ` ${Math.round(status.latencyMs)} ms` : "";
      return {
        text: `$(sparkle) FIM ready${latency}`,
        tooltip: `fim-lsp ready${models}${latency ? `; last completion took${latency}` : ""}\nClick to show competing completions.`,
        error: false,
      };
    }
  }
}

export interface Candidate {
  model: string;
  text: string;
  perplexity: number | null;
  tokens?: number;
  seconds?: number;
  forward_passes?: number;
  hole_length?: number | null;
}

/** The server's answer to `fimLsp.showCandidates`. */
export interface CandidatesResult {
  uri: string;
  position: { line: number; character: number };
  winner: string | null;
  completion: string;
  candidates: Candidate[];
  timings?: Record<string, unknown>;
}

export interface CandidatePick {
  label: string;
  description: string;
  detail: string;
  text: string;
  model: string;
}

/** One quick-pick row per model, lowest perplexity first; the winner is starred. */
export function candidatePicks(result: CandidatesResult): CandidatePick[] {
  const ppl = (c: Candidate) => (typeof c.perplexity === "number" ? c.perplexity : Number.POSITIVE_INFINITY);
  return [...result.candidates]
    .sort((a, b) => ppl(a) - ppl(b))
    .map((c) => {
      const parts = [
        `perplexity ${typeof c.perplexity === "number" ? c.perplexity.toFixed(3) : "n/a"}`,
        typeof c.tokens === "number" ? `${c.tokens} tok` : "",
        typeof c.seconds === "number" ? `${c.seconds.toFixed(2)} s` : "",
        typeof c.forward_passes === "number" ? `${c.forward_passes} passes` : "",
      ].filter((s) => s !== "");
      const oneLine = c.text.replace(/\r?\n/g, " \u21b5 ");
      return {
        label: `${c.model === result.winner ? "$(star-full) " : ""}${c.model}`,
        description: parts.join(" \u00b7 "),
        detail: oneLine === "" ? "(empty)" : oneLine,
        text: c.text,
        model: c.model,
      };
    });
}
