// VS Code asks for an inline completion only on a keystroke. Keystrokes made while the server
// starts find no provider registered yet, or an answer cut short by `waitForModelsMs`, so without
// this nothing is shown until the user types again. (No `vscode` import: unit-tested under node.)

/** Remembers the documents edited before the server was ready. */
export class EditsWhileStarting {
  private ready = false;
  private readonly edited = new Set<string>();

  /** A document the extension serves changed. */
  noteEdit(uri: string): void {
    if (!this.ready) {
      this.edited.add(uri);
    }
  }

  /**
   * A new server state. Returns true when it has just become ready and `activeUri`, the document
   * under the cursor, was edited before: that is when a completion should be asked for.
   */
  noteState(state: string, activeUri: string | undefined): boolean {
    const becameReady = state === "ready" && !this.ready;
    this.ready = state === "ready";
    if (!becameReady) {
      return false;
    }
    const retrigger = activeUri !== undefined && this.edited.has(activeUri);
    this.edited.clear();
    return retrigger;
  }

  /** A new server process: not ready until it says so. */
  reset(): void {
    this.ready = false;
  }
}
