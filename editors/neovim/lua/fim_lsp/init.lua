-- fim-lsp for Neovim: starts the server, shows its inline completions as ghost text,
-- and lists the competing model candidates.
local config = require("fim_lsp.config")
local util = require("fim_lsp.util")

local M = {}

M.name = "fim_lsp"

--- Last `fimLsp/status` per client id, for :checkhealth and statuslines.
---@type table<integer, {state: string, message: string, models: string[], latencyMs: number?}>
M.status = {}

--- Startup failures by command line, so one bad command is reported once, not per buffer.
---@type table<string, string>
M.failures = {}

--- Clients that :FimRestart stopped: never reused, even while their process still winds down.
---@type table<integer, true>
M.stopping = {}

local group = vim.api.nvim_create_augroup("fim_lsp", { clear = true })

local function on_status(_, params, ctx)
  if type(params) ~= "table" then
    return
  end
  local prev = M.status[ctx.client_id]
  M.status[ctx.client_id] = params
  local changed = not prev or prev.state ~= params.state
  -- A failed load is not announced here: the server says why itself (window/showMessage), once.
  if changed and params.state == "ready" and config.options.notify_ready then
    util.notify("models ready: " .. table.concat(params.models or {}, ", "))
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "FimLspStatus", modeline = false, data = params })
end

---@param client_id integer
---@param cmd string[]
---@param log_offset integer
---@return fun(code: integer, signal: integer)
local function on_exit_for(cmd, log_offset)
  return function(code, signal, client_id)
    M.status[client_id] = nil
    local client = vim.lsp.get_client_by_id(client_id)
    -- Exits after a clean start are Neovim's own business (it reports them); only a
    -- server that never came up gets our explanation.
    if code == 0 and signal == 0 then
      return
    end
    if client and client.initialized then
      return
    end
    local key = table.concat(cmd, " ")
    local reason = util.stderr_tail(log_offset) or ("exit code " .. code)
    M.failures[key] = reason
    util.notify(
      ("the server did not start (%s).\n  command: %s\n  Run :checkhealth fim_lsp, fix, then :FimRestart."):format(
        reason,
        key
      ),
      vim.log.levels.ERROR
    )
  end
end

---@param client vim.lsp.Client
---@param bufnr integer
local function on_attach(client, bufnr)
  if config.use_native() then
    require("fim_lsp.native").attach(client, bufnr)
  else
    require("fim_lsp.ghost").attach(client, bufnr)
  end
end

--- Start (or reuse) the server for a buffer.
---@param bufnr? integer
---@return integer? client_id
function M.start(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local opts = config.options
  local cmd = config.command(opts)
  local key = table.concat(cmd, " ")
  if M.failures[key] then
    return nil
  end
  if vim.fn.executable(cmd[1]) ~= 1 then
    M.failures[key] = ("'%s' is not an executable"):format(cmd[1])
    util.notify(
      ("cannot start the server: '%s' is not an executable. Install it with `pip install fim-lsp`, "
        .. "or pass `cmd`/`python` to require('fim_lsp').setup(). See :checkhealth fim_lsp."):format(cmd[1]),
      vim.log.levels.ERROR
    )
    return nil
  end
  local name = vim.api.nvim_buf_get_name(bufnr)
  local root = vim.fs.root(bufnr, opts.root_markers)
    or (name ~= "" and vim.fs.dirname(name))
    or vim.uv.cwd()
  return vim.lsp.start({
    name = M.name,
    cmd = cmd,
    root_dir = root,
    init_options = opts.settings,
    settings = { fimLsp = opts.settings },
    handlers = { ["fimLsp/status"] = on_status },
    on_attach = on_attach,
    on_exit = on_exit_for(cmd, util.log_size()),
  }, {
    bufnr = bufnr,
    -- One server per command line, whatever the root: the models are the expensive part.
    reuse_client = function(client, conf)
      return client.name == conf.name
        and vim.deep_equal(client.config.cmd, conf.cmd)
        and not M.stopping[client.id]
        and not util.is_stopped(client)
    end,
  })
end

--- The fim-lsp client attached to a buffer, if any.
---@param bufnr? integer
---@return vim.lsp.Client?
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = M.name })[1]
end

--- One of the server's commands for the buffer's client; `on_result` gets the answer or nil (the user
--- was told why).
---@param bufnr integer
---@param command string
---@param on_result fun(result: table?)
function M.server_command(bufnr, command, on_result)
  local client = M.client(bufnr)
  if not client then
    util.notify("no fim-lsp server is attached to this buffer", vim.log.levels.WARN)
    return on_result(nil)
  end
  util.server_command(client, command, bufnr, on_result)
end

--- Send the current settings (e.g. after toggling `enabled`).
function M.push_settings()
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client.settings = { fimLsp = config.options.settings }
    util.notify_client(client, "workspace/didChangeConfiguration", { settings = client.settings })
  end
end

---@param on boolean
function M.enable(on)
  config.options.settings.enabled = on
  M.push_settings()
  if not on then
    require("fim_lsp.ghost").clear_all()
  end
end

--- Stop the running servers; start a new one once they are gone (at most `RESTART_WAIT_MS`, then the
--- old process is killed), so two servers never hold the models at once.
M.RESTART_WAIT_MS = 5000

function M.restart()
  M.failures = {}
  local bufs, old = {}, {}
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    for buf in pairs(client.attached_buffers) do
      bufs[#bufs + 1] = buf
    end
    M.stopping[client.id] = true
    old[#old + 1] = client.id
    util.stop_client(client)
  end
  if #bufs == 0 then
    bufs = { vim.api.nvim_get_current_buf() }
  end
  local deadline = vim.uv.now() + M.RESTART_WAIT_MS
  local function start_when_gone()
    -- A client stays registered until its process has exited.
    local alive = vim.tbl_filter(function(id)
      return vim.lsp.get_client_by_id(id) ~= nil
    end, old)
    if #alive > 0 and vim.uv.now() < deadline then
      vim.defer_fn(start_when_gone, 50)
      return
    end
    for _, id in ipairs(alive) do
      vim.lsp.get_client_by_id(id).rpc.terminate() -- stop(true) does nothing to a client already stopping
    end
    for _, buf in ipairs(bufs) do
      if vim.api.nvim_buf_is_valid(buf) and vim.tbl_contains(config.options.filetypes, vim.bo[buf].filetype) then
        M.start(buf)
      end
    end
  end
  start_when_gone()
end

--- A short string for statuslines, e.g. "fim: ready 120ms".
---@return string
function M.statusline()
  local client = M.client(0)
  local st = client and M.status[client.id]
  if not st then
    return ""
  end
  local s = "fim: " .. st.state
  if st.latencyMs then
    s = s .. (" %dms"):format(st.latencyMs)
  end
  return s
end

local function create_commands()
  local cmd = vim.api.nvim_create_user_command
  cmd("FimCandidates", function()
    require("fim_lsp.candidates").show()
  end, { desc = "fim-lsp: show every model's competing completion and its perplexity" })
  cmd("FimShowPrompt", function()
    require("fim_lsp.prompt").show()
  end, { desc = "fim-lsp: show what the models were given for the last completion (prompts, project context)" })
  cmd("FimEnable", function()
    M.enable(true)
  end, { desc = "fim-lsp: enable completions" })
  cmd("FimDisable", function()
    M.enable(false)
  end, { desc = "fim-lsp: disable completions" })
  cmd("FimRestart", function()
    M.restart()
  end, { desc = "fim-lsp: restart the server" })
end

--- Configure and start the plugin.
---@param opts? table see fim_lsp.Options
function M.setup(opts)
  config.set(opts)
  M.failures = {}
  create_commands()
  vim.api.nvim_clear_autocmds({ group = group })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = config.options.filetypes,
    callback = function(ev)
      M.start(ev.buf)
    end,
  })
  -- Buffers already open when setup() runs (lazy loading) get the server too.
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(config.options.filetypes, vim.bo[buf].filetype) then
      M.start(buf)
    end
  end
end

return M
