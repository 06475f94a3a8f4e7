-- Defaults and option merging for the fim-lsp Neovim client.
local M = {}

---@class fim_lsp.Keymaps
---@field accept string|false   accept the shown completion (falls back to the key itself)
---@field next string|false     show the next candidate
---@field prev string|false     show the previous candidate
---@field dismiss string|false  hide the ghost text (falls back to the key itself)

---@class fim_lsp.Options
---@field cmd? string[]         server command; default {"fim-lsp"}, or {python, "-m", "fim_lsp"} when `python` is set
---@field python? string        Python interpreter that has fim-lsp installed
---@field args? string[]        extra server arguments, e.g. {"--log-level", "debug"}
---@field filetypes string[]
---@field settings table        the server's `fimLsp` settings (camelCase keys, see README)
---@field root_markers string[]
---@field debounce_ms integer   ghost-text debounce (Neovim < 0.12 only)
---@field ghost_text "auto"|"native"|"extmark"
---@field keymaps fim_lsp.Keymaps
---@field notify_ready boolean  say so once when the models are loaded

---@type fim_lsp.Options
M.defaults = {
  cmd = nil,
  python = nil,
  args = {},
  filetypes = { "python" },
  settings = {},
  root_markers = { "pyproject.toml", "setup.py", "setup.cfg", ".git" },
  debounce_ms = 150,
  ghost_text = "auto",
  keymaps = { accept = "<Tab>", next = "<M-]>", prev = "<M-[>", dismiss = "<C-]>" },
  notify_ready = false,
}

---@type fim_lsp.Options
M.options = vim.deepcopy(M.defaults)

---@param opts? table
---@return fim_lsp.Options
function M.set(opts)
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  -- Lists are replaced, not merged index-by-index.
  for _, key in ipairs({ "cmd", "args", "filetypes", "root_markers" }) do
    if opts and opts[key] ~= nil then
      M.options[key] = opts[key]
    end
  end
  return M.options
end

--- The full server command line.
---@param opts? fim_lsp.Options
---@return string[]
function M.command(opts)
  opts = opts or M.options
  local cmd
  if opts.cmd then
    cmd = vim.deepcopy(opts.cmd)
  elseif opts.python then
    cmd = { opts.python, "-m", "fim_lsp" }
  else
    cmd = { "fim-lsp" }
  end
  vim.list_extend(cmd, opts.args or {})
  -- `~/venv/bin/python` is how people write it; the process spawner does not expand it.
  cmd[1] = vim.fs.normalize(cmd[1])
  return cmd
end

--- Whether this Neovim has the native LSP inline-completion client (0.12+).
---@param opts? fim_lsp.Options
---@return boolean
function M.use_native(opts)
  opts = opts or M.options
  if opts.ghost_text == "extmark" then
    return false
  end
  local ok, ic = pcall(function()
    return vim.lsp.inline_completion
  end)
  return ok and ic ~= nil and type(ic.enable) == "function"
end

return M
