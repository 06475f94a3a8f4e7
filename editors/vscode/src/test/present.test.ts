import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { candidatePicks, CandidatesResult, statusView } from "../present";

describe("statusView", () => {
  it("names every state in the text, not only in the icon", () => {
    assert.match(statusView({ state: "loading", message: "loading qwen", models: ["qwen"], latencyMs: null }, true).text, /loading/);
    const ready = statusView({ state: "ready", message: "", models: ["qwen", "dllm"], latencyMs: 123.6 }, true);
    assert.equal(ready.text, "$(sparkle) FIM ready 124 ms");
    assert.match(ready.tooltip, /qwen, dllm/);
    assert.equal(ready.error, false);
    const failed = statusView({ state: "failed", message: "CUDA out of memory", models: [], latencyMs: null }, true);
    assert.equal(failed.error, true);
    assert.match(failed.tooltip, /CUDA out of memory/);
    assert.match(statusView(undefined, false).text, /off/);
    assert.equal(statusView({ state: "ready", message: "", models: [], latencyMs: null }, true).text, "$(sparkle) FIM ready");
    assert.equal(statusView(undefined, true).text, "$(sync~spin) FIM starting");
    // Without its icon, each state still reads differently (the icons may not render, or be missed).
    const states = [
      statusView(undefined, true),
      statusView({ state: "loading", message: "", models: [], latencyMs: null }, true),
      statusView({ state: "ready", message: "", models: [], latencyMs: null }, true),
      statusView({ state: "failed", message: "", models: [], latencyMs: null }, true),
      statusView(undefined, false),
    ].map((v) => v.text.replace(/^\$\([^)]*\) /, ""));
    assert.equal(new Set(states).size, states.length, states.join(" | "));
  });
});

describe("candidatePicks", () => {
  const result: CandidatesResult = {
    uri: "file:///a.py",
    position: { line: 1, character: 4 },
    winner: "dllm",
    completion: "return a + b",
    candidates: [
      { model: "qwen", text: "return a+b\n", perplexity: 4.5, tokens: 6, seconds: 0.2, forward_passes: 6 },
      { model: "dllm", text: "return a + b", perplexity: 2.25, tokens: 5, seconds: 0.31, forward_passes: 16, hole_length: 8 },
      { model: "x", text: "", perplexity: null },
    ],
  };

  it("orders by perplexity, stars the winner and shows the numbers", () => {
    const picks = candidatePicks(result);
    assert.deepEqual(
      picks.map((p) => p.model),
      ["dllm", "qwen", "x"],
    );
    assert.equal(picks[0].label, "$(star-full) dllm");
    assert.equal(picks[1].label, "qwen");
    assert.match(picks[0].description, /perplexity 2\.250/);
    assert.match(picks[0].description, /16 passes/);
    assert.match(picks[1].detail, /return a\+b ↵ /);
    assert.equal(picks[1].text, "return a+b\n");
    assert.equal(picks[2].detail, "(empty)");
    assert.match(picks[2].description, /perplexity n\/a/);
  });
});
