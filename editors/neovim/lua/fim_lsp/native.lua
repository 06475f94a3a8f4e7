-- Neovim 0.12+: the built-in `vim.lsp.inline_completion` draws and accepts the ghost
-- text; this only turns it on for our client and adds the keys.
local config = require("fim_lsp.config")

local M = {}

---@param client vim.lsp.Client
---@param bufnr integer
function M.attach(client, bufnr)
  local ic = vim.lsp.inline_completion
  ic.enable(true, { bufnr = bufnr, client_id = client.id })
  local keys = config.options.keymaps
  local function map(lhs, fn, desc, expr)
    if lhs then
      vim.keymap.set("i", lhs, fn, { buffer = bufnr, desc = desc, expr = expr, replace_keycodes = expr, silent = true })
    end
  end
  -- `get()` accepts the shown item and returns true; otherwise the key keeps its meaning.
  map(keys.accept, function()
    if vim.fn.pumvisible() == 1 or not ic.get({ bufnr = bufnr }) then
      return keys.accept
    end
    return ""
  end, "fim-lsp: accept completion", true)
  -- `select` replaced the pre-release `jump`.
  local select = ic.select or ic.jump
  map(keys.next, function()
    select({ bufnr = bufnr, count = 1 })
  end, "fim-lsp: next candidate", false)
  map(keys.prev, function()
    select({ bufnr = bufnr, count = -1 })
  end, "fim-lsp: previous candidate", false)
  -- Moving the cursor hides native ghost text; <C-]> keeps its usual meaning.
end

return M
