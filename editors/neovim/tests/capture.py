"""Record real ghost text in a terminal Neovim: tmux runs nvim with the plugin against the real
server, keys are typed with `tmux send-keys`, and the pane is captured with colours.

    python editors/neovim/tests/capture.py TINY_MODELS_DIR [OUTDIR]

Writes OUTDIR/ghost-text.txt (plain frame), ghost-text.ansi (with escapes) and ghost-text.png
(rendered with Pillow). OUTDIR defaults to editors/neovim/."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
COLS, ROWS = 84, 16
SAMPLE = '''import math


def circle_area(radius: float) -> float:
    """Area of a circle."""
    return math.pi * radius ** 2


def mean(values: list[float]) -> float:
    '''

INIT = r"""
vim.opt.rtp:prepend(%(plugin)s)
vim.o.termguicolors = true
vim.o.number = true
vim.o.swapfile = false
vim.o.laststatus = 2
vim.o.statusline = " %%f  %%{v:lua.require'fim_lsp'.statusline()}"
vim.cmd("filetype plugin indent on | syntax on")
require("fim_lsp").setup({ cmd = %(cmd)s, settings = %(settings)s, debounce_ms = 50 })
-- Tell the recorder when the models are loaded and when ghost text is on screen.
vim.api.nvim_create_autocmd("User", { pattern = "FimLspStatus", callback = function(ev)
  if ev.data.state == "ready" then io.open(%(ready)s, "w"):close() end
end })
local ns = require("fim_lsp.ghost").ns
local timer = vim.uv.new_timer()
timer:start(100, 50, vim.schedule_wrap(function()
  if #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) > 0 then
    timer:stop()
    vim.defer_fn(function() io.open(%(marker)s, "w"):close() end, 300)
  end
end))
"""


def lua_str(s: str) -> str:
    return json.dumps(s)


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def wait_file(path: Path, seconds: float, session: str) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"no {path.name} within {seconds} s:\n" + tmux("capture-pane", "-p", "-t", session))
        time.sleep(0.1)


def record(tiny: Path, outdir: Path, nvim: str = "nvim") -> Path:
    work = Path(tempfile.mkdtemp(prefix="fim-capture-"))
    src = work / "stats.py"
    src.write_text(SAMPLE, encoding="utf-8")
    marker = work / "ghost-shown"
    ready = work / "models-ready"
    settings = {"arModel": str(tiny / "ar"), "dllmModel": str(tiny / "dllm"), "device": "cpu",
                "steps": 8, "maxNewTokens": 12, "dllmLengths": [8]}
    init = work / "init.lua"
    init.write_text(INIT % {
        "plugin": lua_str(str(PLUGIN)),
        "cmd": "{" + ", ".join(lua_str(a) for a in [sys.executable, "-m", "fim_lsp"]) + "}",
        "settings": f"vim.json.decode({lua_str(json.dumps(settings))})",
        "marker": lua_str(str(marker)),
        "ready": lua_str(str(ready)),
    }, encoding="utf-8")
    session = f"fimcap{int(time.time())}"
    tmux("new-session", "-d", "-s", session, "-x", str(COLS), "-y", str(ROWS), "-e", "TERM=xterm-256color",
         "-e", "HF_HUB_OFFLINE=1", "-e", f"PYTHONPATH={PLUGIN.parents[1]}", "-e", f"XDG_STATE_HOME={work}/state",
         "-c", str(work), f"{nvim} -u {init} -i NONE {src.name}")
    try:
        tmux("set-option", "-t", session, "default-terminal", "tmux-256color")
        wait_file(ready, 90, session)
        # Go to the empty body line, enter insert mode at its end, start typing.
        tmux("send-keys", "-t", session, "G", "A")
        time.sleep(0.3)
        tmux("send-keys", "-t", session, "-l", "return sum(values) / ")
        wait_file(marker, 60, session)
        ansi = tmux("capture-pane", "-e", "-p", "-t", session)
        plain = tmux("capture-pane", "-p", "-t", session)
        cursor = tuple(int(v) for v in tmux("display", "-p", "-t", session, "#{cursor_x} #{cursor_y}").split())
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "ghost-text.ansi").write_text(ansi, encoding="utf-8")
    (outdir / "ghost-text.txt").write_text(plain, encoding="utf-8")
    png = outdir / "ghost-text.png"
    render_png(ansi, png, cursor)
    return png


# --- ANSI frame -> PNG -------------------------------------------------------------------------

BASE16 = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
          (17, 168, 205), (229, 229, 229), (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
          (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255)]
DEFAULT_FG, DEFAULT_BG = (224, 226, 234), (20, 22, 27)


def xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    v = 8 + (n - 232) * 10
    return v, v, v


# SGR codes that switch one text attribute on or off.
ATTRS = {1: ("bold", True), 3: ("italic", True), 4: ("underline", True), 7: ("reverse", True),
         22: ("bold", False), 23: ("italic", False), 24: ("underline", False), 27: ("reverse", False),
         39: ("fg", None), 49: ("bg", None)}


def parse_sgr(params: list[int], st: dict) -> None:
    i = 0
    while i < len(params):
        p = params[i]
        if p == 0:
            st.update(fg=None, bg=None, bold=False, italic=False, reverse=False, underline=False)
        elif p in ATTRS:
            key, value = ATTRS[p]
            st[key] = value
        elif p in (38, 48) and i + 1 < len(params):
            key = "fg" if p == 38 else "bg"
            if params[i + 1] == 2 and i + 4 < len(params):
                st[key] = tuple(params[i + 2:i + 5])
                i += 4
            elif params[i + 1] == 5 and i + 2 < len(params):
                st[key] = xterm256(params[i + 2])
                i += 2
        elif 30 <= p <= 37 or 90 <= p <= 97:
            st["fg"] = BASE16[p - 30 if p < 90 else p - 90 + 8]
        elif 40 <= p <= 47 or 100 <= p <= 107:
            st["bg"] = BASE16[p - 40 if p < 100 else p - 100 + 8]
        i += 1


def render_png(ansi: str, out: Path, cursor: tuple[int, ...] | None = None) -> None:
    from PIL import Image, ImageDraw, ImageFont

    fonts = {}
    for style, name in [("", "DejaVuSansMono.ttf"), ("b", "DejaVuSansMono-Bold.ttf"),
                        ("i", "DejaVuSansMono-Oblique.ttf"), ("bi", "DejaVuSansMono-BoldOblique.ttf")]:
        try:
            fonts[style] = ImageFont.truetype(name, 16)
        except OSError:
            fonts[style] = ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{name}", 16)
    cw = round(fonts[""].getlength("M"))
    ch = 21
    pad = 12
    lines = ansi.rstrip("\n").split("\n")
    img = Image.new("RGB", (COLS * cw + 2 * pad, len(lines) * ch + 2 * pad), DEFAULT_BG)
    draw = ImageDraw.Draw(img)
    st = {"fg": None, "bg": None, "bold": False, "italic": False, "reverse": False, "underline": False}
    token = re.compile(r"\x1b\[([0-9;:]*)m|\x1b\[[0-9;?]*[A-Za-z]|([^\x1b])")
    for row, line in enumerate(lines):
        col = 0
        for m in token.finditer(line):
            if m.group(1) is not None:
                parse_sgr([int(x) if x else 0 for x in re.split("[;:]", m.group(1))], st)
                continue
            c = m.group(2)
            if c is None:
                continue
            fg, bg = st["fg"] or DEFAULT_FG, st["bg"] or DEFAULT_BG
            if st["reverse"]:
                fg, bg = bg, fg
            x, y = pad + col * cw, pad + row * ch
            if bg != DEFAULT_BG:
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=bg)
            font = fonts[("b" if st["bold"] else "") + ("i" if st["italic"] else "")]
            draw.text((x, y + 2), c, font=font, fill=fg)
            if st["underline"]:
                draw.line([x, y + ch - 3, x + cw - 1, y + ch - 3], fill=fg)
            col += 1
    if cursor:
        # capture-pane has no cursor; draw the insert-mode bar where tmux says it is.
        x, y = pad + cursor[0] * cw, pad + cursor[1] * ch
        draw.rectangle([x, y + 1, x + 1, y + ch - 2], fill=DEFAULT_FG)
    img.save(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else PLUGIN
    print(record(Path(sys.argv[1]), target, shutil.which("nvim") or "nvim"))
