--- An in-VM dictionary with the interface of `oflua.server.shared(name)`.
--
-- The emulator keeps its webhook queue and delivery records in a shared
-- dictionary so that the server's worker VM (which enqueues) and the main VM
-- (which delivers) see the same data. When both sides run in one VM (specs
-- that drive the app directly, embedding without a server) this table stands
-- in for it. Values are strings, numbers or booleans, as in the shared dict.
local M = {}
M.__index = M

function M.new()
  return setmetatable({ data = {} }, M)
end

local function check_value(v)
  local t = type(v)
  if t ~= "string" and t ~= "number" and t ~= "boolean" and t ~= "nil" then
    error("shared dict values must be strings, numbers or booleans, got " .. t, 3)
  end
end

function M:get(k) return self.data[k] end

function M:set(k, v)
  check_value(v)
  self.data[k] = v
  return true
end

function M:incr(k, n, init)
  local v = self.data[k]
  if v == nil then v = init or 0 end
  if type(v) ~= "number" then return nil, "not a number" end
  v = v + (n or 1)
  self.data[k] = v
  return v
end

function M:add(k, v)
  check_value(v)
  if self.data[k] ~= nil then return false end
  self.data[k] = v
  return true
end

function M:delete(k)
  self.data[k] = nil
  return true
end

function M:keys()
  local ks = {}
  for k in pairs(self.data) do ks[#ks + 1] = k end
  return ks
end

return M
