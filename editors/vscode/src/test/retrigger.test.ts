import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EditsWhileStarting } from "../retrigger";

describe("EditsWhileStarting", () => {
  it("asks again once ready for the active document typed in during start-up", () => {
    const e = new EditsWhileStarting();
    e.noteEdit("file:///a.py");
    assert.equal(e.noteState("loading", "file:///a.py"), false);
    assert.equal(e.noteState("ready", "file:///a.py"), true);
    // Later ready notifications (each completion's latency) do not ask again.
    assert.equal(e.noteState("ready", "file:///a.py"), false);
  });

  it("does not ask for a document nobody typed in, nor for edits made once ready", () => {
    const e = new EditsWhileStarting();
    e.noteEdit("file:///other.py");
    assert.equal(e.noteState("ready", "file:///a.py"), false);
    e.noteEdit("file:///a.py");
    assert.equal(e.noteState("ready", "file:///a.py"), false);
    assert.equal(e.noteState("ready", undefined), false);
  });

  it("waits again through a model reload and a new server", () => {
    const e = new EditsWhileStarting();
    e.noteState("ready", undefined);
    e.noteState("loading", undefined); // a settings change reloads the models
    e.noteEdit("file:///a.py");
    assert.equal(e.noteState("failed", "file:///a.py"), false);
    assert.equal(e.noteState("ready", "file:///a.py"), true);
    e.reset(); // a restarted server has said nothing yet
    e.noteEdit("file:///a.py");
    assert.equal(e.noteState("ready", "file:///a.py"), true);
  });
});
