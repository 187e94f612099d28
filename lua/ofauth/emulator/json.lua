--- JSON helpers for the emulator: ofauth.json (cjson with exact 64-bit
-- integers and empty arrays) with safe decoding.
--
-- Debian's lua-cjson 2.1.0 encodes an empty Lua table as `{}`, but the API
-- answers `[]` for empty lists (`list`, `permissions`): `M.array(t)` marks a
-- list (see ofauth.json).
local ojson = require("ofauth.json")

local M = {}

M.MAX_DEPTH = ojson.MAX_DEPTH -- nesting accepted in request bodies and the state file
M.null = ojson.null
M.array = ojson.array
M.encode = ojson.encode

--- Decode a request body: nil, err on bad JSON or nesting deeper than
-- M.MAX_DEPTH (never raises).
function M.decode(s)
  if type(s) ~= "string" or s == "" then return nil, "empty body" end
  local v = ojson.decode(s)
  if v == nil then return nil, "invalid JSON" end
  return v
end

--- nil for JSON null, the value otherwise.
function M.value(v)
  if v == ojson.null then return nil end
  return v
end

return M
