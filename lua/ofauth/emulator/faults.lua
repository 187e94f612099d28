--- Fault injection rules for the emulator.
--
-- A rule makes the next `count` matching API calls (paths under `/v2/`, never
-- the control API under `/emulator/`) fail in one way:
--   rate_limit       429 with Retry-After: <retry_after> and code RATE_LIMIT_EXCEEDED
--   server_error     <status> (5xx) with code INTERNAL_SERVER_ERROR
--   slow             waits <delay_ms>, then answers normally
--   drop             closes the connection without an answer (needs a server
--                    that can drop; refused otherwise)
--   session_expired  an Access API call (/v2/access/...) answers SESSION_EXPIRED;
--                    the connection itself is left as it is (use
--                    POST /emulator/connections/{id}/expire for that)
-- A rule matches when the request path starts with `path_prefix` and, when
-- `connection_id` is set, the call names that connection (x-connection-id
-- header or a path segment). Rules are tried in the order they were added.
local M = {}

M.KINDS = { "rate_limit", "server_error", "slow", "drop", "session_expired" }
local KIND = {}
for _, k in ipairs(M.KINDS) do KIND[k] = true end

M.defaults = {
  count = 1,
  retry_after = 1,      -- seconds (rate_limit)
  status = 503,         -- server_error
  delay_ms = 2000,      -- slow
  path_prefix = "/v2/",
}
M.MAX_COUNT = 1000000

local function int_in(v, lo, hi)
  return type(v) == "number" and v == math.floor(v) and v >= lo and v <= hi
end

--- Validate a rule given as a table (JSON body or CLI spec). `opts`:
-- {slow_delay_ms_max, can_drop}. Returns a clean rule or nil, message.
function M.validate(spec, opts)
  opts = opts or {}
  if type(spec) ~= "table" then return nil, "a fault must be a JSON object" end
  local kind = spec.kind
  if not KIND[kind] then
    return nil, "kind must be one of " .. table.concat(M.KINDS, ", ")
  end
  if kind == "drop" and not opts.can_drop then
    return nil, "kind drop needs an oflua.server that can drop connections (server.DROP)"
  end
  local rule = { kind = kind }
  for k, v in pairs(M.defaults) do rule[k] = v end
  for k, v in pairs(spec) do
    if k ~= "kind" and M.defaults[k] == nil and k ~= "connection_id" then
      return nil, ("unknown fault field %q"):format(tostring(k))
    end
    if type(v) ~= "userdata" then rule[k] = v end -- JSON null: keep the default
  end
  if not int_in(rule.count, 1, M.MAX_COUNT) then
    return nil, ("count must be an integer from 1 to %d"):format(M.MAX_COUNT)
  end
  if not int_in(rule.retry_after, 0, 86400) then
    return nil, "retry_after must be an integer number of seconds from 0 to 86400"
  end
  if not int_in(rule.status, 500, 599) then return nil, "status must be a 5xx status" end
  local max_delay = opts.slow_delay_ms_max or 60000
  if not int_in(rule.delay_ms, 0, max_delay) then
    return nil, ("delay_ms must be an integer from 0 to %d"):format(max_delay)
  end
  if type(rule.path_prefix) ~= "string" or rule.path_prefix:sub(1, 1) ~= "/" then
    return nil, "path_prefix must start with /"
  end
  if rule.connection_id ~= nil and (type(rule.connection_id) ~= "string" or rule.connection_id == "") then
    return nil, "connection_id must be a string"
  end
  for _, k in ipairs({ "count", "retry_after", "status", "delay_ms" }) do
    rule[k] = math.tointeger(rule[k])
  end
  return rule
end

--- Parse the CLI form `kind[,field=value...]`, e.g. `rate_limit,count=3,retry_after=2`.
function M.parse_spec(s)
  if type(s) ~= "string" or s == "" then return nil, "empty fault" end
  local parts = {}
  for p in (s .. ","):gmatch("([^,]*),") do parts[#parts + 1] = p end
  local spec = { kind = parts[1] }
  for i = 2, #parts do
    local k, v = parts[i]:match("^([%w_]+)=(.*)$")
    if not k then return nil, ("bad fault field %q (want name=value)"):format(parts[i]) end
    spec[k] = tonumber(v) or v
  end
  return spec
end

local Set = {}
Set.__index = Set

function M.new(opts)
  return setmetatable({ rules = {}, next_id = 0, opts = opts or {} }, Set)
end

function Set:add(spec)
  local rule, err = M.validate(spec, self.opts)
  if not rule then return nil, err end
  if #self.rules >= (self.opts.max_faults or 100) then
    return nil, "too many fault rules (max_faults)"
  end
  self.next_id = self.next_id + 1
  rule.id = self.next_id
  self.rules[#self.rules + 1] = rule
  return rule
end

function Set:clear()
  local n = #self.rules
  self.rules = {}
  return n
end

function Set:list()
  local out = {}
  for i, r in ipairs(self.rules) do
    local c = {}
    for k, v in pairs(r) do c[k] = v end
    out[i] = c
  end
  return out
end

local function names_connection(path, conn_header, id)
  if conn_header == id then return true end
  for seg in path:gmatch("[^/]+") do
    if seg == id then return true end
  end
  return false
end

--- The rule that applies to this call, if any (its count is consumed).
function Set:take(path, conn_header)
  for i, r in ipairs(self.rules) do
    local ok = path:sub(1, #r.path_prefix) == r.path_prefix
    if ok and r.kind == "session_expired" then ok = path:sub(1, 11) == "/v2/access/" end
    if ok and r.connection_id then ok = names_connection(path, conn_header, r.connection_id) end
    if ok then
      r.count = r.count - 1
      if r.count <= 0 then table.remove(self.rules, i) end
      return r
    end
  end
  return nil
end

return M
