-- Ghost text for Neovim 0.10/0.11, which have no native inline completion: ask the
-- server for `textDocument/inlineCompletion` after a pause in typing and draw the
-- answer as extmarks.
local config = require("fim_lsp.config")
local util = require("fim_lsp.util")

local M = {}

M.ns = vim.api.nvim_create_namespace("fim_lsp.ghost")

---@class fim_lsp.Item
---@field text string
---@field range {[1]: integer, [2]: integer, [3]: integer, [4]: integer} 0-based rows, byte cols
---@field command? table

---@class fim_lsp.GhostState
---@field client_id integer
---@field timer? uv.uv_timer_t
---@field pending? integer        id of the in-flight request
---@field items fim_lsp.Item[]
---@field index integer
---@field tick integer            changedtick the items belong to
---@field cursor {[1]: integer, [2]: integer}
---@field complete boolean        the items are every candidate (an invoked request), not the automatic one

---@type table<integer, fim_lsp.GhostState>
M.state = {}

---@param bufnr integer
local function resolve(bufnr)
  return (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
end

---@param bufnr integer
function M.clear(bufnr)
  bufnr = resolve(bufnr)
  local st = M.state[bufnr]
  if st then
    st.items, st.index = {}, 0
  end
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

function M.clear_all()
  for bufnr in pairs(M.state) do
    M.clear(bufnr)
  end
end

---@param bufnr integer
---@return fim_lsp.Item?
function M.current(bufnr)
  bufnr = resolve(bufnr)
  local st = M.state[bufnr]
  if not st or st.index == 0 then
    return nil
  end
  -- Ghost text belongs to one buffer state; any edit or move makes it stale.
  local cur = vim.api.nvim_win_get_cursor(0)
  if st.tick ~= vim.b[bufnr].changedtick or cur[1] ~= st.cursor[1] or cur[2] ~= st.cursor[2] then
    return nil
  end
  return st.items[st.index]
end

---@param bufnr integer
---@return boolean
function M.visible(bufnr)
  return M.current(bufnr) ~= nil
end

--- The part of the item's text still to be shown: the range start may lie before the
--- cursor (the server can replace the typed part of the line).
---@param bufnr integer
---@param item fim_lsp.Item
---@return string[]
local function remaining_lines(bufnr, item)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local text = item.text
  if item.range[1] == row - 1 and item.range[2] < col then
    local typed = vim.api.nvim_buf_get_text(bufnr, row - 1, item.range[2], row - 1, col, {})[1]
    if text:sub(1, #typed) == typed then
      text = text:sub(#typed + 1)
    end
  end
  return util.lines(text)
end

---@param bufnr integer
local function render(bufnr)
  vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local st = M.state[bufnr]
  local item = st.items[st.index]
  local lines = remaining_lines(bufnr, item)
  if #lines == 1 and lines[1] == "" then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local first = { { lines[1], "FimLspGhost" } }
  if #st.items > 1 then
    table.insert(first, { (" (%d/%d)"):format(st.index, #st.items), "FimLspGhostIndex" })
  end
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "FimLspGhost" } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.ns, row - 1, col, {
    virt_text = first,
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

---@param client vim.lsp.Client
---@param bufnr integer
---@param raw table
---@return fim_lsp.Item?
local function to_item(client, bufnr, raw)
  local text = raw.insertText
  if type(text) == "table" then
    text = text.value
  end
  if type(text) ~= "string" then
    return nil
  end
  local range
  if raw.range then
    local s, e = raw.range["start"], raw.range["end"]
    range = {
      s.line,
      util.byte_col(bufnr, s, client.offset_encoding),
      e.line,
      util.byte_col(bufnr, e, client.offset_encoding),
    }
  else
    local row, col = unpack(vim.api.nvim_win_get_cursor(0))
    range = { row - 1, col, row - 1, col }
  end
  return { text = text, range = range, command = raw.command }
end

--- Ask for completions now, replacing any request still in flight.
---@param bufnr integer
---@param trigger_kind? integer 1 = invoked, 2 = automatic
---@param step? integer show the candidate this far from the first (cycling), instead of the first
function M.request(bufnr, trigger_kind, step)
  local st = M.state[bufnr]
  local client = st and vim.lsp.get_client_by_id(st.client_id)
  if not client or vim.api.nvim_get_current_buf() ~= bufnr or not vim.fn.mode():match("^i") then
    return
  end
  if config.options.settings.enabled == false then
    return
  end
  if st.pending then
    -- The server drops cancelled work; without this, stale requests pile up behind it.
    util.cancel(client, st.pending)
    st.pending = nil
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = trigger_kind or 2 }
  local tick = vim.b[bufnr].changedtick
  local cursor = vim.api.nvim_win_get_cursor(0)
  local request_id
  local ok, id = util.request(client, "textDocument/inlineCompletion", params, function(err, result)
    if st.pending == request_id then
      st.pending = nil
    end
    if err or not result or request_id ~= st.last then
      return
    end
    local now = vim.api.nvim_win_get_cursor(0)
    if vim.b[bufnr].changedtick ~= tick or now[1] ~= cursor[1] or now[2] ~= cursor[2] then
      return
    end
    if vim.api.nvim_get_current_buf() ~= bufnr or not vim.fn.mode():match("^i") then
      return
    end
    local items = {}
    for _, raw in ipairs(result.items or result) do
      local item = to_item(client, bufnr, raw)
      if item and item.text ~= "" then
        items[#items + 1] = item
      end
    end
    if #items == 0 then
      return
    end
    st.items, st.tick, st.cursor = items, tick, cursor
    st.index = (step or 0) % #items + 1
    st.complete = (trigger_kind or 2) == 1
    render(bufnr)
  end, bufnr)
  if ok then
    request_id = id
    st.pending, st.last = id, id
  end
end

---@param bufnr integer
local function schedule(bufnr)
  local st = M.state[bufnr]
  if not st then
    return
  end
  st.timer = st.timer or vim.uv.new_timer()
  st.timer:stop()
  st.timer:start(
    config.options.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if vim.api.nvim_buf_is_valid(bufnr) then
        M.request(bufnr)
      end
    end)
  )
end

--- Insert the shown completion. Returns false when there is none.
---@param bufnr integer
---@return boolean
function M.accept(bufnr)
  bufnr = resolve(bufnr)
  local item = M.current(bufnr)
  if not item then
    return false
  end
  local st = M.state[bufnr]
  M.clear(bufnr)
  local lines = util.lines(item.text)
  local r = item.range
  vim.api.nvim_buf_set_text(bufnr, r[1], r[2], r[3], r[4], lines)
  local end_row = r[1] + #lines
  local end_col = #lines == 1 and r[2] + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row, end_col })
  local client = vim.lsp.get_client_by_id(st.client_id)
  if client and item.command then
    -- Tells the server which model's text was taken (its acceptance stats).
    util.request(client, "workspace/executeCommand", {
      command = item.command.command,
      arguments = item.command.arguments,
    }, function() end, bufnr)
  end
  return true
end

---@param bufnr integer
---@param delta integer
function M.cycle(bufnr, delta)
  local st = M.state[bufnr]
  if not M.visible(bufnr) then
    M.request(bufnr, 1)
    return
  end
  if not st.complete then
    -- An automatic answer holds the winner only: ask for every candidate (the server answers this
    -- context from its cache) and step from the winner, which comes first.
    M.request(bufnr, 1, st.index - 1 + delta)
    return
  end
  st.index = (st.index - 1 + delta) % #st.items + 1
  render(bufnr)
end

--- Feed a key as if it were not mapped, ahead of anything else still typed.
---@param key string
local function fallback(key)
  vim.api.nvim_feedkeys(vim.keycode(key), "in", false)
end

---@param bufnr integer
local function set_keymaps(bufnr)
  local keys = config.options.keymaps
  local function map(lhs, fn, desc)
    if lhs then
      vim.keymap.set("i", lhs, fn, { buffer = bufnr, desc = desc, silent = true })
    end
  end
  map(keys.accept, function()
    if vim.fn.pumvisible() == 1 or not M.accept(bufnr) then
      fallback(keys.accept)
    end
  end, "fim-lsp: accept completion")
  map(keys.dismiss, function()
    if M.visible(bufnr) then
      M.clear(bufnr)
    else
      fallback(keys.dismiss)
    end
  end, "fim-lsp: dismiss completion")
  map(keys.next, function()
    M.cycle(bufnr, 1)
  end, "fim-lsp: next candidate")
  map(keys.prev, function()
    M.cycle(bufnr, -1)
  end, "fim-lsp: previous candidate")
end

---@param client vim.lsp.Client
---@param bufnr integer
function M.attach(client, bufnr)
  if M.state[bufnr] then
    M.state[bufnr].client_id = client.id
    return
  end
  M.state[bufnr] = { client_id = client.id, items = {}, index = 0, tick = -1, cursor = { 0, 0 }, complete = false }
  vim.api.nvim_set_hl(0, "FimLspGhost", { link = "Comment", default = true })
  vim.api.nvim_set_hl(0, "FimLspGhostIndex", { link = "NonText", default = true })
  set_keymaps(bufnr)
  local group = vim.api.nvim_create_augroup("fim_lsp.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      if not M.visible(bufnr) then
        M.clear(bufnr)
        schedule(bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      local st = M.state[bufnr]
      if st and st.timer then
        st.timer:stop()
      end
      M.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      if ev.data and ev.data.client_id == client.id then
        local st = M.state[bufnr]
        if st and st.timer then
          st.timer:stop()
          st.timer:close()
        end
        M.clear(bufnr)
        M.state[bufnr] = nil
        pcall(vim.api.nvim_del_augroup_by_id, group)
      end
    end,
  })
  -- The server can come up while the user is already typing: offer something right away.
  if vim.api.nvim_get_current_buf() == bufnr and vim.fn.mode():match("^i") then
    schedule(bufnr)
  end
end

return M
