--- Test doubles for specs of the ofauth library: a scripted HTTP transport,
-- a fake clock, and an in-memory store with oflua.store's interface (the real
-- store has its own specs and the end-to-end specs use it).
local M = {}

--- A transport answering from a script: each entry is a response table
-- {status, headers, body} or {err = {kind, message}}; function entries are
-- called with the request. Records every request in .requests.
function M.http(script)
  local t = { requests = {}, script = script or {} }
  setmetatable(t, { __call = function(self, req)
    self.requests[#self.requests + 1] = req
    local entry = table.remove(self.script, 1)
    if entry == nil then error("fake http: no scripted answer for " .. req.method .. " " .. req.url) end
    if type(entry) == "function" then entry = entry(req) end
    if entry.err then return nil, entry.err end
    return { status = entry.status, headers = entry.headers or {}, body = entry.body or "" }
  end })
  return t
end

--- A clock whose sleep() only advances time; .slept lists the delays.
function M.clock(start)
  local c = { t = start or 1700000000, slept = {} }
  c.now = function() return c.t end
  c.sleep = function(s)
    c.slept[#c.slept + 1] = s
    c.t = c.t + s
  end
  return c
end

--- In-memory store: put/get/delete/list/transaction and the inbox calls.
function M.store()
  local kv, inbox, order = {}, {}, {}
  local s = {}
  function s.put(_, k, v) kv[k] = v return true end
  function s.get(_, k) return kv[k] end
  function s.delete(_, k) local had = kv[k] ~= nil; kv[k] = nil; return had end
  function s.list(_, prefix)
    local keys = {}
    for k in pairs(kv) do if k:sub(1, #prefix) == prefix then keys[#keys + 1] = k end end
    table.sort(keys)
    local i = 0
    return function()
      i = i + 1
      if keys[i] then return keys[i], kv[keys[i]] end
    end
  end
  function s.transaction(self, fn)
    local snapshot = {}
    for k, v in pairs(kv) do snapshot[k] = v end
    local ok, err = pcall(fn, self)
    if not ok then kv = snapshot; error(err, 0) end
    return true
  end
  function s.inbox_add(_, id, payload, _, lease_s)
    if inbox[id] then return false end
    inbox[id] = { id = id, payload = payload, attempts = 0, state = lease_s and "claimed" or "pending", due = 0 }
    order[#order + 1] = id
    return true
  end
  s.clock = function() return 0 end
  function s.inbox_claim(_, n)
    local out = {}
    for _, id in ipairs(order) do
      local e = inbox[id]
      if #out < n and e.state == "pending" and e.due <= s.clock() then
        e.state = "claimed"
        out[#out + 1] = { id = id, payload = e.payload, attempts = e.attempts }
      end
    end
    return out
  end
  function s.inbox_done(_, id) inbox[id].state = "done" return true end
  function s.inbox_fail(_, id, reason, max)
    local e = inbox[id]
    e.attempts = e.attempts + 1
    e.last_error = reason
    if e.attempts >= (max or 5) then e.state = "dead"
    else e.state = "pending"; e.due = s.clock() + 2 ^ e.attempts end
    return e.state, e.state == "pending" and e.due or nil
  end
  function s.inbox_retry(_, id) local e = inbox[id]; e.state = "pending"; e.due = 0 return true end
  function s.inbox_dead()
    local out = {}
    for _, id in ipairs(order) do
      local e = inbox[id]
      if e.state == "dead" then out[#out + 1] = { id = id, payload = e.payload, attempts = e.attempts,
        last_error = e.last_error } end
    end
    return out
  end
  s._inbox = inbox
  s._kv = function() return kv end
  return s
end

return M
