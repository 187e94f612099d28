--- Keeping secrets out of logs and errors.
--
-- Connection ids are credentials: anywhere one might be shown (an error's
-- path or message, a log line) it is cut to `conn_…c123`. Registered secrets
-- (the API key, the webhook secret) are replaced by `[redacted]` wherever
-- they appear in text. Every module that formats text for people goes
-- through here.
local M = {}

-- Where a connection id looks like OFAuth's (`conn_abc123`). Assumption kept
-- in one place: ids are `conn_` followed by letters, digits, `-` or `_`.
M.connection_id_pattern = "conn_[%w%-_]+"

local secrets = {}

--- Remember a secret so that `text()` removes it from anything it formats.
-- Short values (< 8 bytes) are not registered: they would mangle normal text.
function M.register_secret(s)
  if type(s) == "string" and #s >= 8 then secrets[s] = true end
end

--- `conn_abcdef123` -> `conn_…f123` (the prefix and the last 4 characters).
function M.id(id)
  if type(id) ~= "string" then return id end
  local prefix = id:match("^(%a+_)") or ""
  local rest = id:sub(#prefix + 1)
  if #rest <= 4 then return prefix .. "…" end
  return prefix .. "…" .. rest:sub(-4)
end

local function plain_gsub(s, needle, repl)
  local out, i = {}, 1
  while true do
    local a, b = s:find(needle, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = repl
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

--- Text with connection ids shortened and registered secrets removed.
function M.text(s)
  if type(s) ~= "string" then return s end
  for secret in pairs(secrets) do
    if s:find(secret, 1, true) then s = plain_gsub(s, secret, "[redacted]") end
  end
  return (s:gsub(M.connection_id_pattern, M.id))
end

--- Deep copy of a decoded JSON value with every string passed through text().
function M.value(v, depth)
  depth = depth or 0
  if type(v) == "string" then return M.text(v) end
  if type(v) ~= "table" or depth > 32 then return v end
  local out = {}
  for k, x in pairs(v) do out[M.text(k)] = M.value(x, depth + 1) end
  return setmetatable(out, getmetatable(v))
end

-- oflua.server passes handler, tick and shutdown errors through this
-- registry function before logging them (an app's own error text may hold a
-- connection id). An app that set its own filter keeps it.
do
  local reg = debug.getregistry()
  if reg["oflua.error_filter"] == nil then reg["oflua.error_filter"] = M.text end
end

return M
