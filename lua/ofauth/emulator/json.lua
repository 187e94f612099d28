--- JSON helpers for the emulator: cjson with empty arrays and safe decoding.
--
-- Debian's lua-cjson 2.1.0 encodes an empty Lua table as `{}`, but the API
-- answers `[]` for empty lists (`list`, `permissions`). `M.array(t)` marks a
-- list: a non-empty one is returned as is, an empty one becomes a sentinel
-- string that `M.encode` rewrites to `[]` after encoding.
local M = {}

M.MAX_DEPTH = 64 -- nesting accepted in request bodies and the state file

-- Our own cjson instance, so the depth limit does not change other users'.
local cjson = require("cjson").new()
cjson.decode_max_depth(M.MAX_DEPTH)

M.null = cjson.null

-- The sentinel holds NUL bytes, which cjson always escapes as \u0000: no
-- string coming from a request can produce the escaped form by accident
-- unless it contains the exact NUL-bracketed text.
local EMPTY = "\0oflua:[]\0"
local EMPTY_ENCODED = '"\\u0000oflua:[]\\u0000"'

function M.array(t)
  if t == nil or next(t) == nil then return EMPTY end
  return t
end

function M.encode(v)
  local s = cjson.encode(v)
  if s:find(EMPTY_ENCODED, 1, true) then
    s = s:gsub('"\\u0000oflua:%[%]\\u0000"', "[]")
  end
  return s
end

--- Decode a request body: nil, err on bad JSON or nesting deeper than
-- M.MAX_DEPTH (never raises).
function M.decode(s)
  if type(s) ~= "string" or s == "" then return nil, "empty body" end
  local ok, v = pcall(cjson.decode, s)
  if not ok then return nil, "invalid JSON" end
  return v
end

--- nil for JSON null, the value otherwise.
function M.value(v)
  if v == cjson.null then return nil end
  return v
end

return M
