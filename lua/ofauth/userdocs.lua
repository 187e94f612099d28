--- The end-user page "Connecting your OnlyFans account", filled in from the
-- permissions the integrator configured in the OFAuth dashboard.
--
--   local text = assert(require("ofauth.userdocs").render{
--     app_name = "Acme", permissions = "profile,subscribers", contact = "help@acme.test"})
local core = require("oflua.core")

local M = {}

-- What each permission lets the application read, in words a user follows.
-- Permission names as chosen in the dashboard (ofauth-api.md lists profile,
-- posts, messages, ...; the others are unconfirmed names: extend here).
M.permissions = {
  profile = "your public profile: display name, username and avatar",
  subscribers = "your subscriber list: usernames, subscription dates and status",
  posts = "your posts and their statistics",
  messages = "your messages and chats with fans",
  vault = "the media in your vault",
  earnings = "your earnings and payout statistics",
  statistics = "your account statistics",
}

M.defaults = {
  purpose = "provide its features",
  template = core.lua_dir .. "/ofauth/templates/user-docs.md",
}

local function list(s)
  local out = {}
  if type(s) == "table" then
    for _, p in ipairs(s) do out[#out + 1] = p end
  elseif type(s) == "string" then
    for p in s:gmatch("[^,%s]+") do out[#out + 1] = p end
  end
  return out
end

--- opts: app_name, permissions (list or "a,b"), purpose, contact,
-- disconnect_where (e.g. "from Settings > Connections"), template (path).
-- Returns the Markdown text or nil, err.
function M.render(opts)
  opts = opts or {}
  if type(opts.app_name) ~= "string" or opts.app_name == "" then
    return nil, "--app-name is required"
  end
  local perms = list(opts.permissions)
  if #perms == 0 then return nil, "--permissions is required (e.g. profile,subscribers)" end
  local lines = {}
  for _, p in ipairs(perms) do
    local what = M.permissions[p]
    if not what then
      local known = {}
      for k in pairs(M.permissions) do known[#known + 1] = k end
      table.sort(known)
      return nil, ("unknown permission '%s' (known: %s)"):format(p, table.concat(known, ", "))
    end
    lines[#lines + 1] = ("- **%s**: %s"):format(p, what)
  end
  local path = opts.template or M.defaults.template
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read the template: " .. tostring(err) end
  local text = f:read("a")
  f:close()
  local values = {
    app_name = opts.app_name,
    purpose = opts.purpose or M.defaults.purpose,
    permission_list = table.concat(lines, "\n"),
    disconnect_where = opts.disconnect_where and (" " .. opts.disconnect_where) or
      " from your account settings in " .. opts.app_name,
    contact_line = opts.contact and ("Write to " .. opts.contact .. ".") or
      ("Contact " .. opts.app_name .. "'s support."),
  }
  return (text:gsub("{{([%w_]+)}}", function(k) return values[k] or ("{{" .. k .. "}}") end))
end

return M
