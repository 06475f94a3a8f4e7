-- Small helpers that paper over API differences between Neovim 0.10, 0.11 and 0.12.
local M = {}

local has_011 = vim.fn.has("nvim-0.11") == 1

---@param msg string
---@param level? integer
function M.notify(msg, level)
  -- Scheduled: an ERROR notify inside a FileType autocmd would otherwise abort the
  -- user's :edit with an exception instead of just showing the message.
  vim.schedule(function()
    vim.notify("fim-lsp: " .. msg, level or vim.log.levels.INFO, { title = "fim-lsp" })
  end)
end

-- 0.11 made the client methods colon-style and deprecated the dot style.
---@return boolean ok, integer? request_id
function M.request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

--- One of the server's `workspace/executeCommand` commands, without arguments: `on_result` gets its
--- answer, or nil (and the user a message) when it failed or there is nothing to show yet.
---@param on_result fun(result: table?)
function M.server_command(client, command, bufnr, on_result)
  M.request(client, "workspace/executeCommand", { command = command, arguments = {} }, function(err, result)
    if err then
      M.notify(command .. " failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return on_result(nil)
    end
    if result == nil or result == vim.NIL then
      M.notify("no completion yet: type in a buffer first", vim.log.levels.INFO)
      return on_result(nil)
    end
    on_result(result)
  end, bufnr)
end

---@return table? response {err, result}, or nil on timeout
function M.request_sync(client, method, params, timeout_ms, bufnr)
  if has_011 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

function M.cancel(client, id)
  if has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.notify_client(client, method, params)
  if has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

---@return boolean
function M.is_stopped(client)
  if has_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

function M.stop_client(client)
  if has_011 then
    return client:stop()
  end
  return client.stop()
end

--- Buffer lines of a server text. The server writes a CRLF document's line breaks as CRLF, while a
--- buffer line holds no line ending at all (Neovim adds the file's on :w): split on CRLF, LF and CR.
---@param text string
---@return string[]
function M.lines(text)
  return vim.split((text:gsub("\r\n?", "\n")), "\n", { plain = true })
end

--- Byte column of an LSP position in a buffer line.
---@param bufnr integer
---@param pos {line: integer, character: integer}
---@param encoding string
---@return integer
function M.byte_col(bufnr, pos, encoding)
  local ok, col = pcall(vim.lsp.util._get_line_byte_from_position, bufnr, pos, encoding)
  return ok and col or pos.character
end

--- Size of the LSP log now, so a failed start reads only what its own process wrote.
---@return integer
function M.log_size()
  local size = vim.fn.getfsize(vim.lsp.get_log_path())
  return size > 0 and size or 0
end

local function unquote(s)
  local map = { n = "\n", t = "\t", r = "\r", ['"'] = '"', ["\\"] = "\\" }
  return (s:gsub("\\(.)", function(c)
    return map[c] or c
  end))
end

--- The last meaningful stderr line the server wrote, from Neovim's LSP log (which is
--- the only place Neovim keeps a server's stderr).
---@param offset integer log size when the server was started
---@return string?
function M.stderr_tail(offset)
  local f = io.open(vim.lsp.get_log_path(), "rb")
  if not f then
    return nil
  end
  f:seek("set", offset)
  local data = f:read("*a") or ""
  f:close()
  local text = {}
  for chunk in data:gmatch('"stderr"%s+"(.-[^\\])"\n') do
    text[#text + 1] = unquote(chunk)
  end
  local last
  for line in table.concat(text):gmatch("[^\n]+") do
    if line:match("%S") then
      last = vim.trim(line)
    end
  end
  return last
end

return M
