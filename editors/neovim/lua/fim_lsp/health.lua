-- :checkhealth fim_lsp
local config = require("fim_lsp.config")
local util = require("fim_lsp.util")

local M = {}

local h = vim.health

--- The interpreter the server runs under: the command itself when it is a Python,
--- otherwise the `#!` line of the console script.
---@param cmd string[]
---@return string?
function M.python_of(cmd)
  local exe = vim.fn.exepath(cmd[1])
  if exe == "" then
    return nil
  end
  if vim.fs.basename(exe):match("^python") then
    return exe
  end
  local f = io.open(exe, "rb")
  if not f then
    return nil
  end
  local first = f:read("*l") or ""
  f:close()
  local shebang = first:match("^#!%s*(%S+)")
  if shebang and vim.fs.basename(shebang) == "env" then
    shebang = vim.fn.exepath(first:match("^#!%s*%S+%s+(%S+)") or "")
  end
  return shebang ~= "" and shebang or nil
end

--- Where a server setting comes from when no server can tell: the editor setting, else the command
--- line's option (`--flag value` or `--flag=value`), else the server's default.
---@param cmd string[]
---@param settings table
---@return table<string, string>
function M.expected_settings(cmd, settings)
  local keys = {
    { "models", "--models", "both" },
    { "device", "--device", "auto" },
    { "arModel", "--ar-model", "Qwen/Qwen2.5-Coder-0.5B" },
    { "dllmModel", "--dllm-model", "fredzzp/open-dcoder-0.5B" },
  }
  local out = {}
  for _, k in ipairs(keys) do
    local key, flag, default = k[1], k[2], k[3]
    local value = settings[key] ~= nil and tostring(settings[key]) or nil
    if value == nil then
      for i, arg in ipairs(cmd) do -- the last occurrence wins, as with argparse
        if arg == flag and cmd[i + 1] then
          value = cmd[i + 1]
        end
        value = arg:match("^" .. vim.pesc(flag) .. "=(.*)$") or value
      end
    end
    out[key] = value or default
  end
  return out
end

local function settings_line(values, source)
  return ("settings (%s): models=%s device=%s arModel=%s dllmModel=%s"):format(
    source,
    tostring(values.models),
    tostring(values.device),
    tostring(values.arModel),
    tostring(values.dllmModel)
  )
end

local function run(argv)
  local ok, res = pcall(function()
    return vim.system(argv, { text = true }):wait(15000)
  end)
  if not ok or res.code ~= 0 then
    return nil, ok and vim.trim((res.stderr or "") .. (res.stdout or "")) or tostring(res)
  end
  return vim.trim(res.stdout or "")
end

function M.check()
  h.start("fim-lsp: Neovim")
  local v = vim.version()
  local mode = config.use_native() and "native vim.lsp.inline_completion"
    or "the plugin's extmark ghost text (Neovim < 0.12)"
  h.ok(("Neovim %d.%d.%d, inline completions via %s"):format(v.major, v.minor, v.patch, mode))

  h.start("fim-lsp: server command")
  local cmd = config.command()
  h.info("command: " .. table.concat(cmd, " "))
  local exe = vim.fn.exepath(cmd[1])
  if exe == "" then
    h.error(("'%s' is not an executable"):format(cmd[1]), {
      "pip install fim-lsp (in the Python environment you want to use)",
      "or setup({ python = '/path/to/python' }) to run `python -m fim_lsp`",
    })
  else
    h.ok("found " .. exe)
  end
  local failure = require("fim_lsp").failures[table.concat(cmd, " ")]
  if failure then
    h.error("the last start failed: " .. failure, { "fix it, then :FimRestart" })
  end

  h.start("fim-lsp: Python interpreter")
  local python = M.python_of(cmd)
  if not python then
    h.warn("could not tell which Python runs the server")
  else
    local out, err = run({
      python,
      "-c",
      "import sys, importlib.util as u; s = u.find_spec('fim_lsp'); "
        .. "print(sys.version.split()[0], s.origin if s else 'MISSING')",
    })
    if not out then
      h.error(python .. " does not run: " .. (err or "?"))
    elseif out:match("MISSING$") then
      h.error(("%s (Python %s) cannot import fim_lsp"):format(python, out:match("^(%S+)")), { "pip install fim-lsp" })
    else
      local ver, origin = out:match("^(%S+)%s+(.*)$")
      h.ok(("%s (Python %s), fim_lsp at %s"):format(python, ver, origin))
    end
  end

  h.start("fim-lsp: models")
  local clients = vim.lsp.get_clients({ name = require("fim_lsp").name })
  if #clients == 0 then
    h.warn("no fim-lsp server is running (open a " .. table.concat(config.options.filetypes, "/") .. " file)")
  end
  for _, client in ipairs(clients) do
    local st = require("fim_lsp").status[client.id]
    if not st then
      h.info(("client %d: no status from the server yet"):format(client.id))
    else
      local line = ("client %d: %s - %s"):format(client.id, st.state, st.message or "")
      if st.models and #st.models > 0 then
        line = line .. " [" .. table.concat(st.models, ", ") .. "]"
      end
      if type(st.latencyMs) == "number" then
        line = line .. (" last latency %d ms"):format(st.latencyMs)
      end
      if st.state == "ready" then
        h.ok(line)
      elseif st.state == "failed" then
        h.error(line)
      else
        h.info(line)
      end
    end
  end
  -- The running server knows what it uses; without one, say what a start would use.
  for _, client in ipairs(clients) do
    local resp = util.request_sync(client, "workspace/executeCommand", { command = "fimLsp.stats", arguments = {} }, 3000)
    local got = resp and resp.result and resp.result.settings
    if type(got) == "table" then
      h.info(settings_line(got, ("in force, from client %d"):format(client.id)))
    end
  end
  if #clients == 0 then
    h.info(settings_line(M.expected_settings(cmd, config.options.settings), "for the next start"))
  end
end

return M
