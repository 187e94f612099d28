--- JSON for the ofauth library: lua-cjson plus exact 64-bit integers.
--
-- Debian's lua-cjson 2.1.0 decodes every number as a double and encodes
-- numbers with 14 significant digits, so OnlyFans ids above 10^14 go out as
-- `1.2345678901234e+14` and ids above 2^53 come back rounded. This module
-- keeps cjson (no second JSON library) and fixes both edges around it:
--   encode  integers with 15 or more digits are swapped for a marker string
--           before cjson runs, and the marker is replaced by the exact
--           digits in cjson's output (`%d`, no rounding);
--   decode  integer literals with 16 or more digits (outside strings) are
--           swapped for a marker string before cjson runs, and turned back
--           into Lua integers afterwards; every other number with an
--           integral value within +-2^53 (exact in a double) comes back as a
--           Lua integer too. So `123` decodes to the integer 123 and
--           `9007199254740993` to 2^53 + 1 exactly. Integers beyond the
--           64-bit range stay floats, as before.
-- The marker holds a NUL byte and a per-process random nonce, so no JSON
-- string can produce it (cjson escapes NUL as \u0000 when encoding). The
-- scan is linear in the body; bodies without a 16-digit run skip it.
-- Measured with bench/json_int.lua (a 100-item page, ~5 KB, on the shared
-- 2-core dev box under load ~9, so figures are rough): decode 126 us with
-- small ids (cjson 37 us: the post-pass walk), 280 us with 50 ids above
-- 2^53 (cjson 38 us), encode 167 us (cjson 21 us). A fraction of a
-- millisecond per page against an API round trip of many milliseconds, so
-- this stays in Lua; a C scanner next to cjson is the way out if a profile
-- ever shows it.
local cjson_mod = require("cjson")

local M = {}

M.MAX_DEPTH = 64

local cjson = cjson_mod.new()
cjson.decode_max_depth(M.MAX_DEPTH)
cjson.encode_max_depth(M.MAX_DEPTH)

M.null = cjson.null
M.cjson = cjson

local function nonce()
  local ok, crypto = pcall(require, "oflua.crypto")
  if ok and crypto.random then return crypto.hex(crypto.random(6)) end
  return ("%x"):format(math.random(0, 0x7fffffff))
end

local TAG = "\0oflua-int-" .. nonce() .. ":"
local TAG_LEN = #TAG
local TAG_JSON = '"\\u0000' .. TAG:sub(2) -- the marker as JSON text (cjson refuses a raw NUL)
-- what cjson makes of a marker string: "\u0000oflua-int-<nonce>:<digits>"
local TAG_ENCODED = '"\\u0000' .. TAG:sub(2):gsub("%p", "%%%0") .. "(%-?%d+)\""
local EMPTY = TAG .. "[]"
local EMPTY_ENCODED = '"\\u0000' .. TAG:sub(2):gsub("%p", "%%%0") .. '%[%]"'

--- Mark `t` as a JSON array: an empty table encodes as `[]` instead of `{}`.
function M.array(t)
  if t == nil or next(t) == nil then return EMPTY end
  return t
end

local BIG = 1e14 -- from here on %.14g loses digits (or switches to exponent form)

local function needs_fix(v, depth)
  if depth > M.MAX_DEPTH then return false end
  local tv = type(v)
  if tv == "number" then return math.type(v) == "integer" and (v >= BIG or v <= -BIG) end
  if tv == "string" then return v == EMPTY end
  if tv ~= "table" then return false end
  for k, x in pairs(v) do
    if needs_fix(x, depth + 1) or needs_fix(k, depth + 1) then return true end
  end
  return false
end

local function copy_marked(v, depth)
  local tv = type(v)
  if tv == "number" then
    if math.type(v) == "integer" and (v >= BIG or v <= -BIG) then return TAG .. ("%d"):format(v) end
    return v
  end
  if tv ~= "table" or depth > M.MAX_DEPTH then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy_marked(x, depth + 1) end
  return setmetatable(out, getmetatable(v))
end

--- Encode a Lua value. Raises (like cjson) on values JSON cannot hold.
function M.encode(v)
  if not needs_fix(v, 0) then return cjson.encode(v) end
  local s = cjson.encode(copy_marked(v, 0))
  s = s:gsub(EMPTY_ENCODED, "[]")
  return (s:gsub(TAG_ENCODED, "%1"))
end

-- Swap integer literals of 16+ digits outside strings for marker strings.
-- Text is copied only around the literals it replaces.
local function mark_big(s)
  if not s:find("%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d") then return s end
  local out, last, pos, n = {}, 1, 1, #s
  local a, b -- the next digit run at or after pos (searched again only once passed)
  while pos <= n do
    if not a or a < pos then
      a, b = s:find("%-?%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d+", pos)
      if not a then break end
    end
    local q = s:find('"', pos, true)
    if q and q < a then
      -- skip the string that starts at q (escapes included)
      local i = q + 1
      while true do
        local e = s:find('["\\]', i)
        if not e then i = n + 1 break end -- unterminated: cjson reports it
        if s:byte(e) == 92 then i = e + 2 else i = e + 1 break end
      end
      pos = i
    else
      local prev = a > 1 and s:byte(a - 1) or 32
      local nxt = s:byte(b + 1) or 32
      local lit = s:sub(a, b)
      -- not part of a fraction or exponent, and within the 64-bit range
      if not (prev == 46 or prev == 43 or prev == 45 or prev == 101 or prev == 69
          or (prev >= 48 and prev <= 57) or nxt == 46 or nxt == 101 or nxt == 69)
        and math.type(tonumber(lit)) == "integer" then
        out[#out + 1] = s:sub(last, a - 1)
        out[#out + 1] = TAG_JSON .. lit .. '"'
        last = b + 1
      end
      pos = b + 1
    end
  end
  if last == 1 then return s end
  out[#out + 1] = s:sub(last)
  return table.concat(out)
end

local EXACT = 2 ^ 53

local function fix(v)
  for k, x in pairs(v) do
    local tx = type(x)
    if tx == "table" then
      fix(x)
    elseif tx == "number" then
      if x == math.floor(x) and x > -EXACT and x < EXACT then v[k] = math.tointeger(x) end
    elseif tx == "string" and x:byte(1) == 0 and x:sub(1, TAG_LEN) == TAG then
      v[k] = math.tointeger(tonumber(x:sub(TAG_LEN + 1))) or x
    end
  end
end

--- Decode JSON text: the value, or nil, message (never raises).
function M.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local ok, v = pcall(cjson.decode, mark_big(s))
  if not ok then return nil, tostring(v) end
  local tv = type(v)
  if tv == "table" then
    fix(v)
  elseif tv == "number" then
    if v == math.floor(v) and v > -EXACT and v < EXACT then v = math.tointeger(v) end
  elseif tv == "string" and v:sub(1, TAG_LEN) == TAG then
    v = math.tointeger(tonumber(v:sub(TAG_LEN + 1))) or v
  end
  return v
end

M._mark_big = mark_big -- for specs

return M
