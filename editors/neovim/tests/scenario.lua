-- Drives a headless Neovim through one scenario and writes what it saw to a JSON file.
-- Run: FIM_TEST=... FIM_OUT=out.json nvim --headless -u NONE -i NONE -S scenario.lua
-- Env: FIM_TEST (ghost|fail|health|crlf|cycle|restart|loadfail|context), FIM_OUT, FIM_CMD (JSON list),
--      FIM_ARGS (JSON list, setup's `args`), FIM_SETTINGS (JSON), FIM_FILE (a .py file to edit),
--      FIM_PLUGIN (the editors/neovim directory).
-- Keys go through nvim_input, so they are handled by the main loop like real typing.
vim.opt.rtp:prepend(os.getenv("FIM_PLUGIN"))
vim.cmd("filetype on")
vim.o.swapfile = false

local out = { notifications = {}, errors = {} }
local real_notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(out.notifications, { msg = msg, level = level })
  return real_notify(msg, level, opts)
end

local function finish()
  local log = io.open(vim.lsp.get_log_path(), "rb")
  out.lsp_log = log and log:read("*a") or ""
  if log then
    log:close()
  end
  out.messages = vim.fn.execute("messages")
  out.errmsg = vim.v.errmsg
  local f = assert(io.open(os.getenv("FIM_OUT"), "w"))
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd("qa!")
end

--- Yield until cond() is true or timeout_ms passes; the main loop keeps running meanwhile.
local function wait_for(cond, timeout_ms)
  local co = coroutine.running()
  local deadline = vim.uv.now() + timeout_ms
  local timer = vim.uv.new_timer()
  timer:start(
    0,
    20,
    vim.schedule_wrap(function()
      local ok, done = pcall(cond)
      if (ok and done) or vim.uv.now() > deadline then
        if not timer:is_closing() then
          timer:stop()
          timer:close()
          coroutine.resume(co)
        end
      end
    end)
  )
  coroutine.yield()
  local ok, done = pcall(cond)
  return ok and done or false
end

local function sleep(ms)
  wait_for(function()
    return false
  end, ms)
end

local fim = require("fim_lsp")
local ghost = require("fim_lsp.ghost")

local function client()
  return fim.client(0)
end

local function ghost_marks()
  local marks = vim.api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })
  local res = {}
  for _, m in ipairs(marks) do
    local d = m[4]
    local lines = { "" }
    for _, chunk in ipairs(d.virt_text or {}) do
      if chunk[2] == "FimLspGhost" then
        lines[1] = lines[1] .. chunk[1]
      end
    end
    for _, vl in ipairs(d.virt_lines or {}) do
      local s = ""
      for _, chunk in ipairs(vl) do
        s = s .. chunk[1]
      end
      lines[#lines + 1] = s
    end
    res[#res + 1] = { row = m[2], col = m[3], text = table.concat(lines, "\n"), pos = d.virt_text_pos }
  end
  return res
end

local function buffer_text()
  return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
end

local scenarios = {}

--- Edit FIM_FILE and wait until the server is ready; returns the client (nil when it never was).
local function open_and_wait_ready()
  vim.cmd.edit(os.getenv("FIM_FILE"))
  out.filetype = vim.bo.filetype
  out.fileformat = vim.bo.fileformat
  local t0 = vim.uv.now()
  out.started = wait_for(function()
    local c = client()
    return next(fim.failures) ~= nil or (c and c.initialized and fim.status[c.id] and fim.status[c.id].state == "ready")
  end, 90000) and next(fim.failures) == nil
  out.ready_after_ms = vim.uv.now() - t0
  local c = client()
  out.status = c and fim.status[c.id]
  return c
end

--- Append "ret" to the last line in insert mode, as a user would, and wait for ghost text.
local function type_and_wait_for_ghost()
  vim.api.nvim_win_set_cursor(0, { vim.api.nvim_buf_line_count(0), 0 })
  vim.api.nvim_input("A")
  sleep(50)
  vim.api.nvim_input("ret")
  return wait_for(function()
    return #ghost_marks() > 0
  end, 60000)
end

local function execute(c, command)
  local done, shown = false, nil
  require("fim_lsp.util").request(c, "workspace/executeCommand", { command = command, arguments = {} }, function(_, res)
    shown = res
    done = true
  end, 0)
  wait_for(function()
    return done
  end, 10000)
  return shown
end

local function show_candidates(c)
  return execute(c, "fimLsp.showCandidates")
end

function scenarios.ghost()
  local t0 = vim.uv.now()
  local c = open_and_wait_ready()
  if not c then
    return
  end
  out.ghost_shown = type_and_wait_for_ghost()
  out.ghost_after_ms = vim.uv.now() - t0
  out.mode = vim.fn.mode()
  out.marks = ghost_marks()
  local item = ghost.current(0)
  out.item_text = item and item.text
  out.cursor_before = vim.api.nvim_win_get_cursor(0)
  out.before = buffer_text()

  out.shown = show_candidates(c) -- what the server says it offered, to compare with the extmark

  vim.api.nvim_input("<Tab>")
  wait_for(function()
    return buffer_text() ~= out.before
  end, 5000)
  out.after = buffer_text()
  out.cursor_after = vim.api.nvim_win_get_cursor(0)
  out.marks_after_accept = ghost_marks()

  -- With no ghost text, <Tab> must stay a Tab: dismiss first, then press it.
  sleep(10)
  ghost.clear(0)
  local st = ghost.state[vim.api.nvim_get_current_buf()]
  if st and st.timer then
    st.timer:stop()
  end
  local before_tab = buffer_text()
  vim.api.nvim_input("<Tab>")
  wait_for(function()
    return buffer_text() ~= before_tab
  end, 3000)
  out.plain_tab_inserted = buffer_text():sub(#before_tab + 1)
  out.plain_tab_before = before_tab
  out.plain_tab_after = buffer_text()
  vim.api.nvim_input("<Esc>")
  sleep(50)
  out.marks_after_esc = ghost_marks()

  local got
  require("fim_lsp.candidates").show(0, function(lines, win)
    got = { lines = lines or vim.NIL, win = win or vim.NIL }
  end)
  wait_for(function()
    return got ~= nil
  end, 10000)
  out.candidates = got
  if got and got.win ~= vim.NIL then
    out.float_lines = vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(got.win), 0, -1, false)
    out.float_relative = vim.api.nvim_win_get_config(got.win).relative
  end

  local prompt
  require("fim_lsp.prompt").show(0, function(result, scratch)
    prompt = {
      result = result or vim.NIL,
      lines = scratch and vim.api.nvim_buf_get_lines(scratch, 0, -1, false) or vim.NIL,
      filetype = scratch and vim.bo[scratch].filetype or vim.NIL,
    }
  end)
  wait_for(function()
    return prompt ~= nil
  end, 10000)
  out.prompt = prompt
end

-- A CRLF file (fileformat=dos): accept multi-line ghost text and write the file.
function scenarios.crlf()
  local c = open_and_wait_ready()
  if not c then
    return
  end
  out.ghost_shown = type_and_wait_for_ghost()
  out.marks = ghost_marks()
  local item = ghost.current(0)
  out.item_text = item and item.text
  out.shown = show_candidates(c)
  local before = buffer_text()
  vim.api.nvim_input("<Tab>")
  wait_for(function()
    return buffer_text() ~= before
  end, 5000)
  out.lines_after = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  vim.api.nvim_input("<Esc>")
  sleep(50)
  vim.cmd.write()
end

-- Alt+] and Alt+[ on automatic ghost text (which holds the winner only).
function scenarios.cycle()
  local c = open_and_wait_ready()
  if not c then
    return
  end
  out.ghost_shown = type_and_wait_for_ghost()
  local first = ghost.current(0)
  out.first_text = first and first.text
  out.items_before = #ghost.state[vim.api.nvim_get_current_buf()].items
  vim.api.nvim_input("<M-]>")
  wait_for(function()
    local cur = ghost.current(0)
    return cur ~= nil and cur.text ~= out.first_text
  end, 20000)
  local st = ghost.state[vim.api.nvim_get_current_buf()]
  out.next_text = ghost.current(0) and ghost.current(0).text
  out.next_index, out.items_after = st.index, #st.items
  out.next_marks = ghost_marks()
  vim.api.nvim_input("<M-[>")
  wait_for(function()
    return st.index == 1
  end, 5000)
  out.prev_text = ghost.current(0) and ghost.current(0).text
  out.shown = show_candidates(c)
end

-- :FimRestart must leave one running server that serves.
function scenarios.restart()
  local c = open_and_wait_ready()
  if not c then
    return
  end
  out.old_id = c.id
  vim.cmd("FimRestart")
  out.restarted = wait_for(function()
    local n = client()
    return n ~= nil and n.id ~= out.old_id and n.initialized and fim.status[n.id] ~= nil
      and fim.status[n.id].state == "ready"
  end, 90000)
  sleep(2000) -- the old client exited half a second after a restart that reused it
  local now = vim.lsp.get_clients({ name = "fim_lsp" })
  out.clients = #now
  out.ids = vim.tbl_map(function(x)
    return x.id
  end, now)
  out.children = #vim.api.nvim_get_proc_children(vim.fn.getpid())
  out.ghost_shown = type_and_wait_for_ghost()
end

-- Project context: the settings given to setup() reach the server, the workspace (the buffer's root)
-- is indexed, and :FimShowPrompt shows what the completion's models were given.
function scenarios.context()
  local c = open_and_wait_ready()
  if not c then
    return
  end
  local stats
  out.indexed = false
  local deadline = vim.uv.now() + 60000
  while not out.indexed and vim.uv.now() < deadline do
    stats = execute(c, "fimLsp.stats")
    local p = stats and stats.project and stats.project.indexProgress
    out.indexed = type(p) == "table" and p.finished == true
    if not out.indexed then
      sleep(100)
    end
  end
  out.settings = stats and stats.settings
  out.project = stats and stats.project
  out.ghost_shown = type_and_wait_for_ghost()
  vim.api.nvim_input("<Esc>")
  sleep(50)
  vim.cmd("FimShowPrompt")
  wait_for(function()
    return vim.bo.filetype == "json"
  end, 10000)
  out.prompt_lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
end

-- A load that fails: how often it is said, and how long "loading" lasted.
function scenarios.loadfail()
  local t0 = vim.uv.now()
  vim.cmd.edit(os.getenv("FIM_FILE"))
  out.failed = wait_for(function()
    local c = client()
    return c ~= nil and fim.status[c.id] ~= nil and fim.status[c.id].state == "failed"
  end, 150000)
  out.failed_after_ms = vim.uv.now() - t0
  local c = client()
  out.status = c and fim.status[c.id]
  sleep(1000) -- let any second report of the same failure arrive
end

function scenarios.fail()
  vim.cmd.edit(os.getenv("FIM_FILE"))
  wait_for(function()
    for _, n in ipairs(out.notifications) do
      if n.msg:match("^fim%-lsp:") then
        return true
      end
    end
    return false
  end, 30000)
  sleep(300) -- let any follow-up errors surface
  -- A second Python buffer must not spawn the broken server again.
  vim.cmd.edit(vim.fn.tempname() .. ".py")
  sleep(500)
  out.clients = #vim.lsp.get_clients({ name = "fim_lsp" })
end

function scenarios.health()
  vim.cmd.edit(os.getenv("FIM_FILE"))
  wait_for(function()
    local c = client()
    return next(fim.failures) ~= nil or (c and fim.status[c.id] and fim.status[c.id].state == "ready")
  end, 90000)
  vim.cmd("checkhealth fim_lsp")
  out.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
end

local ok_settings, settings = pcall(vim.json.decode, os.getenv("FIM_SETTINGS") or "{}")
fim.setup({
  cmd = vim.json.decode(os.getenv("FIM_CMD")),
  args = vim.json.decode(os.getenv("FIM_ARGS") or "[]"),
  settings = ok_settings and settings or {},
  debounce_ms = 30,
})

coroutine.wrap(function()
  local ok, err = xpcall(scenarios[os.getenv("FIM_TEST")], debug.traceback)
  if not ok then
    table.insert(out.errors, err)
  end
  finish()
end)()
