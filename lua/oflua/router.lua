--- oflua.router: method + path routing for oflua.server handlers (pure Lua).
--
--   local r = require("oflua.router").new()
--   r:get("/users/:id", function(req) return 200, "user " .. req.params.id end)
--   r:post("/webhooks/ofauth", handle_webhook)
--   return r            -- a handler script may return the router itself
--
-- Paths are split on "/"; a segment ":name" matches any one non-empty
-- segment and puts it, percent-decoded, in req.params.name; a last segment
-- "*name" (or "*") matches the rest of the path (possibly empty, not
-- decoded). Matching is on the raw path the server hands over (req.path is
-- never decoded, so "%2F" inside a segment does not split it). Static routes are looked up
-- in a table; routes with parameters are tried in the order they were added.
-- No match: 404. A path that matches but not with this method: 405 with an
-- Allow header. HEAD runs the GET route (the server sends no body for HEAD).
-- Error bodies are JSON ({"error": "..."}) unless opts.format = "text".
local M = {}

--- Defaults, overridable per router with M.new(opts).
M.defaults = {
  format = "json", -- "json" or "text": body of the 404/405 answers
}

local Router = {}
Router.__index = Router

local function split(path)
  local segs = {}
  for seg in path:gmatch("[^/]*", 2) do segs[#segs + 1] = seg end
  return segs
end

local function compile(path)
  assert(type(path) == "string" and path:sub(1, 1) == "/", "route path must start with '/'")
  local segs = split(path)
  local dynamic = false
  for i, seg in ipairs(segs) do
    local c = seg:sub(1, 1)
    if c == ":" then
      assert(#seg > 1, "route parameter needs a name: " .. path)
      dynamic = true
    elseif c == "*" then
      assert(i == #segs, "'*' must be the last segment: " .. path)
      dynamic = true
    end
  end
  return { path = path, segs = segs, dynamic = dynamic, methods = {} }
end

local function unhex(h) return string.char(tonumber(h, 16)) end
local function decode(s)
  if not s:find("%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", unhex))
end

-- params table when route pattern `pat` matches the split path, else nil.
local function match(pat, segs)
  local params = {}
  local n = #pat.segs
  for i = 1, n do
    local p, s = pat.segs[i], segs[i]
    local c = p:sub(1, 1)
    if c == "*" then
      params[#p > 1 and p:sub(2) or "splat"] = table.concat(segs, "/", i)
      return params
    end
    if s == nil then return nil end
    if c == ":" then
      if s == "" then return nil end
      params[p:sub(2)] = decode(s)
    elseif p ~= s then
      return nil
    end
  end
  if #segs ~= n then return nil end
  return params
end

--- A new router. opts: fields of M.defaults.
function M.new(opts)
  local self = setmetatable({ static = {}, dynamic = {}, by_path = {} }, Router)
  self.opts = setmetatable(opts or {}, { __index = M.defaults })
  return self
end

--- Register fn(req) -> status, body, headers for method and path.
function Router:route(method, path, fn)
  assert(type(method) == "string", "method must be a string")
  assert(type(fn) == "function" or (type(fn) == "table" and getmetatable(fn) and getmetatable(fn).__call),
    "route handler must be callable")
  method = method:upper()
  local pat = self.by_path[path]
  if not pat then
    pat = compile(path)
    self.by_path[path] = pat
    if pat.dynamic then
      self.dynamic[#self.dynamic + 1] = pat
    else
      self.static[path] = pat
    end
  end
  pat.methods[method] = fn
  return self
end

for _, m in ipairs({ "get", "post", "put", "delete", "patch", "head", "options" }) do
  local method = m:upper()
  Router[m] = function(self, path, fn) return self:route(method, path, fn) end
end

local function allow_list(methods)
  local list = {}
  for m in pairs(methods) do list[#list + 1] = m end
  if methods.GET and not methods.HEAD then list[#list + 1] = "HEAD" end
  table.sort(list)
  return table.concat(list, ", ")
end

function Router:error_response(status, message, headers)
  headers = headers or {}
  if self.opts.format == "text" then
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return status, message .. "\n", headers
  end
  headers["Content-Type"] = "application/json"
  return status, '{"error":"' .. message .. '"}', headers
end

--- The handler: route req (method, path) and call the matching function.
function Router:handle(req)
  local path = req.path or "/"
  local pat, params = self.static[path], nil
  if pat then
    params = {}
  else
    local segs = split(path)
    for _, p in ipairs(self.dynamic) do
      params = match(p, segs)
      if params then
        pat = p
        break
      end
    end
  end
  if not pat then return self:error_response(404, "not found") end
  local method = req.method
  local fn = pat.methods[method]
  if not fn and method == "HEAD" then fn = pat.methods.GET end
  if not fn then
    return self:error_response(405, "method not allowed", { Allow = allow_list(pat.methods) })
  end
  req.params = params
  return fn(req)
end

return M
