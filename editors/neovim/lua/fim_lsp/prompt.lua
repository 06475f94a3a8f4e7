-- :FimShowPrompt: what the models were given for the last completion (the server's fimLsp.showPrompt),
-- as JSON in a scratch buffer in a new split: the decoded prompts and the project-context chunks.

local M = {}

--- Ask the server and open the answer.
---@param bufnr? integer
---@param callback? fun(result: table?, scratch: integer?)
function M.show(bufnr, callback)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  require("fim_lsp").server_command(bufnr, "fimLsp.showPrompt", function(result)
    if not result then
      return callback and callback(nil, nil)
    end
    local text = vim.json.encode(result)
    local ok, pretty = pcall(vim.fn.system, { "python3", "-m", "json.tool" }, text)
    local lines = vim.split((ok and vim.v.shell_error == 0) and pretty or text, "\n", { trimempty = true })
    vim.cmd("vsplit")
    local scratch = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_win_set_buf(0, scratch)
    vim.api.nvim_buf_set_lines(scratch, 0, -1, false, lines)
    vim.bo[scratch].filetype = "json"
    vim.bo[scratch].modifiable = false
    vim.bo[scratch].bufhidden = "wipe"
    if callback then
      callback(result, scratch)
    end
  end)
end

return M
