-- :FimCandidates: every model's completion for the last request, with its perplexity,
-- in a floating window (the server picks the lowest perplexity).

local M = {}

---@param result table the server's `fimLsp.showCandidates` answer
---@return string[]
function M.format(result)
  local lines = {}
  local winner = result.winner
  lines[#lines + 1] = ("fim-lsp candidates (winner: %s)"):format(winner or "none")
  local cands = result.candidates or {}
  table.sort(cands, function(a, b)
    return (a.perplexity or math.huge) < (b.perplexity or math.huge)
  end)
  for _, c in ipairs(cands) do
    local mark = c.model == winner and "*" or " "
    local ppl = type(c.perplexity) == "number" and ("%.3f"):format(c.perplexity) or "n/a"
    local head = ("%s %-5s  perplexity %s"):format(mark, c.model, ppl)
    if c.tokens then
      head = head .. ("  %d tok"):format(c.tokens)
    end
    if c.seconds then
      head = head .. ("  %.2f s"):format(c.seconds)
    end
    if c.forward_passes then
      head = head .. ("  %d passes"):format(c.forward_passes)
    end
    lines[#lines + 1] = ""
    lines[#lines + 1] = head
    local text = c.text or ""
    if text == "" then
      lines[#lines + 1] = "    (empty)"
    else
      for _, l in ipairs(vim.split(text, "\n", { plain = true })) do
        lines[#lines + 1] = "    " .. l
      end
    end
  end
  if #cands == 0 then
    lines[#lines + 1] = "(no candidates)"
  end
  return lines
end

---@type integer?
M.win = nil

---@param lines string[]
---@return integer bufnr, integer winid
local function open_float(lines)
  return vim.lsp.util.open_floating_preview(lines, "", {
    border = "rounded",
    focus_id = "fim_lsp_candidates",
    max_width = math.max(40, math.floor(vim.o.columns * 0.8)),
    max_height = math.max(10, math.floor(vim.o.lines * 0.6)),
  })
end

--- Ask the server and show the window.
---@param bufnr? integer
---@param callback? fun(lines: string[]?, winid: integer?)
function M.show(bufnr, callback)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  require("fim_lsp").server_command(bufnr, "fimLsp.showCandidates", function(result)
    if not result then
      return callback and callback(nil, nil)
    end
    local lines = M.format(result)
    local _, win = open_float(lines)
    M.win = win
    if callback then
      callback(lines, win)
    end
  end)
end

return M
