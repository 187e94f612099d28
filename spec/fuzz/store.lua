-- Fuzz target: oflua.store opening sealed data it finds in its database.
-- store_api.c keeps its unseal path internal, so the fuzzed bytes go where an
-- attacker with write access to the file would put them: the harness's
-- fuzz.sql writes them into one column of a real store (a sealed value, a
-- sealed key, an event id or payload, the key id, the meta row...), then the
-- store reads it back (get, list, inbox_get/claim/dead/stats, open). Nothing
-- may raise (except list(), documented to raise), nothing forged may come
-- out, and no message may show a value or the master key. Each input is
-- undone afterwards from a snapshot of the rows.
--
-- Input: byte 1 picks the column (see OPS), the rest is the new content
-- (integer columns: 8 bytes little-endian when there are 8, else the number
-- written in the text, else the length).
local store = require("oflua.store")

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
local path = dir .. "/fuzz.db"
local KEY = store.keygen()
local NOW = 1700000000
local V1, V2 = "value one: conn_fuzz0001", "value two"

local s = assert(store.open({ path = path, key = KEY }))
assert(s:put("k1", V1))
assert(s:put("k2", V2))
assert(s:inbox_add("evt1", "payload one", NOW))
assert(s:inbox_add("evt2", "payload two", NOW))
assert(s:inbox_fail("evt2", "handler failed", 1, NOW) == "dead")

local sql = rawget(_G, "fuzz").sql -- set by the harness (spec/fuzz/fuzz_lua.c)

local function snapshot(tbl)
  local rows = sql(path, "SELECT * FROM " .. tbl .. " ORDER BY 1")
  return rows
end
local cols = {
  oflua_meta = { "one", "format", "kid", "salt", "check_box" },
  oflua_kv = { "id", "ns", "kidx", "kid", "kbox", "vbox" },
  oflua_inbox = { "id", "ns", "eidx", "kid", "ebox", "pbox", "rbox", "state", "attempts", "next_at",
    "created_at", "updated_at" },
}
local orig = {}
for t in pairs(cols) do orig[t] = snapshot(t) end

-- Puts the original rows of `only` (a table name) back.
local function restore(only)
  for t, names in pairs(cols) do
    if t == only then
      local sets = {}
      for i = 2, #names do
        -- fuzz.sql binds strings as blobs; TEXT columns get text back
        local text = names[i] == "ns" or names[i] == "state"
        sets[#sets + 1] = names[i] .. (text and " = CAST(?%d AS TEXT)" or " = ?%d"):format(i)
      end
      local stmt = ("UPDATE %s SET %s WHERE %s = ?1"):format(t, table.concat(sets, ", "), names[1])
      for _, row in ipairs(orig[t]) do
        local args = {}
        for i = 1, #names do
          local v = row[i]
          if v == false then v = nil end
          args[i] = v
        end
        sql(path, stmt, table.unpack(args, 1, #names))
      end
    end
  end
end

local function as_int(b)
  if #b >= 8 then return (string.unpack("<i8", b)) end
  return math.tointeger(tonumber(b)) or #b
end

local function no_leak(msg)
  if type(msg) ~= "string" then return end
  assert(not msg:find(V1, 1, true) and not msg:find(KEY, 1, true), "a message shows a secret: " .. msg)
end

-- get k1 after a change: never raises; returns V1 only if the row is intact
local function check_get(changed)
  local v, err = s:get("k1")
  if v ~= nil then
    assert(not changed, "a changed row opened")
    assert(v == V1)
  end
  no_leak(err)
end

local function check_list(changed)
  local ok, err = pcall(function()
    for k, v in s:list() do
      assert(k == "k1" or k == "k2", "list produced a forged key")
      if k == "k1" then assert(v == V1 and not changed, "list produced a forged value") end
      if k == "k2" then assert(v == V2) end
    end
  end)
  if not ok then
    assert(type(err) == "string" and not err:find("list produced", 1, true), err)
    no_leak(err)
  end
end

-- changed: the row (1: evt1, 2: evt2) whose sealed data was changed, or nil;
-- col: which column. What each call opens: inbox_get finds the event by its
-- blind index (the caller gives the id: no ebox) and opens payload and last
-- error; a claim opens id and payload; inbox_dead all three.
local opens = {
  get = { pbox = true, rbox = true, kid = true },
  claim = { pbox = true, ebox = true, kid = true },
  dead = { pbox = true, ebox = true, rbox = true, kid = true },
}
local payloads = { evt1 = "payload one", evt2 = "payload two" }
local reasons = { evt2 = "handler failed" }
local rows = { evt1 = 1, evt2 = 2 }

local function check_inbox(changed, col)
  local function intact(call, it)
    assert(payloads[it.id] == it.payload, "a forged event")
    assert(not (changed == rows[it.id] and opens[call][col]), "a changed event opened in " .. call)
  end
  local e, err = s:inbox_get("evt1")
  if e then
    intact("get", e)
    assert(e.last_error == nil, "a forged last_error")
  end
  no_leak(err)
  local items
  items, err = s:inbox_claim(10, 60, NOW + 10)
  no_leak(err)
  for _, it in ipairs(items or {}) do intact("claim", it) end
  local dead
  dead, err = s:inbox_dead()
  no_leak(err)
  for _, it in ipairs(dead or {}) do
    intact("dead", it)
    assert(it.last_error == reasons[it.id], "a forged last_error")
  end
  local stats
  stats, err = s:inbox_stats()
  no_leak(err)
  if stats then assert(type(stats.total) == "number") end
end

local function check_open(changed)
  local h, err = store.open({ path = path, key = KEY, create = false })
  if h then
    assert(not changed, "a store with a changed meta row opened")
    assert(h:get("k1") == V1)
    h:close()
  end
  no_leak(err)
end

-- false when SQLite refuses the change (e.g. a kidx equal to another row's:
-- the fuzzer finds those through memcmp), which is not the store's business
local function set(tbl, col, where, value, text)
  return (pcall(sql, path, ("UPDATE %s SET %s = %s WHERE %s"):format(tbl, col,
    text and "CAST(?1 AS TEXT)" or "?1", where), value))
end

-- the original value of a column (to tell "changed" from "rewritten as is")
local function original(tbl, col, row)
  for i, name in ipairs(cols[tbl]) do
    if name == col then return orig[tbl][row][i] end
  end
end

local OPS = {
  { "oflua_kv", "vbox", "id = 1", 1, check_get },
  { "oflua_kv", "kbox", "id = 1", 1, check_list },
  { "oflua_kv", "kid", "id = 1", 1, check_get, true },
  { "oflua_kv", "kidx", "id = 1", 1, check_get },
  { "oflua_inbox", "pbox", "id = 1", 1, check_inbox },
  { "oflua_inbox", "ebox", "id = 1", 1, check_inbox },
  { "oflua_inbox", "pbox", "id = 2", 2, check_inbox },
  { "oflua_inbox", "rbox", "id = 2", 2, check_inbox },
  { "oflua_inbox", "kid", "id = 1", 1, check_inbox, true },
  { "oflua_inbox", "state", "id = 1", 1, check_inbox, "text" },
  { "oflua_inbox", "attempts", "id = 1", 1, check_inbox, true },
  { "oflua_inbox", "next_at", "id = 1", 1, check_inbox, true },
  { "oflua_meta", "check_box", "one = 1", 1, check_open },
  { "oflua_meta", "salt", "one = 1", 1, check_open },
  { "oflua_meta", "kid", "one = 1", 1, check_open, true },
  { "oflua_meta", "format", "one = 1", 1, check_open, true },
  -- moving a valid box to another row (the input's bytes are ignored)
  { "oflua_kv", "vbox", "id = 1", 1, check_get, "swap" },
  { "oflua_inbox", "pbox", "id = 1", 1, check_inbox, "swap" },
  { "oflua_inbox", "rbox", "id = 1", 1, check_inbox, "swap" },
}

return function(data)
  if #data == 0 then return end
  local op = OPS[data:byte(1) % #OPS + 1]
  local tbl, col, where, row, check, kind = op[1], op[2], op[3], op[4], op[5], op[6]
  local value = data:sub(2)
  if kind == true then value = as_int(value) end
  if kind == "swap" then value = original(tbl, col, 2) end
  local changed = value ~= original(tbl, col, row)
  if not set(tbl, col, where, value, kind == "text") then return end
  -- columns that only steer (state, attempts, time) do not forge anything
  if tbl == "oflua_inbox" and (col == "state" or col == "attempts" or col == "next_at") then changed = false end
  if tbl == "oflua_inbox" then check(changed and row or nil, col) else check(changed) end
  restore(tbl)
  -- claims change the inbox whatever the column
  if tbl ~= "oflua_inbox" then restore("oflua_inbox") end
  -- and the store works again
  local v, err = s:get("k1")
  assert(v == V1, "after restore: " .. tostring(v) .. " " .. tostring(err))
end, function()
  s:close()
  os.execute("rm -rf '" .. dir .. "'")
end
