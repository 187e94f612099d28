-- oflua.store across processes and on disk: nothing in clear in the files,
-- acknowledged writes survive a SIGKILL, two processes deduplicate one event.
local h = require("spec.helper")
local store = require("oflua.store")
local core = require("oflua.core")
local backends = require("spec.support.store_backends")

local tmpdir = h.tmpdir

local dirs = {}
local function newdir()
  local d = tmpdir()
  dirs[#dirs + 1] = d
  return d
end

teardown(function()
  for _, d in ipairs(dirs) do h.sh("rm -rf " .. h.shq(d)) end
  backends.cleanup()
end)

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function unbase64(s)
  s = s:gsub("[^%w%+/]", "")
  local bits = s:gsub(".", function(c)
    local v = B64:find(c, 1, true) - 1
    local r = ""
    for i = 5, 0, -1 do r = r .. ((v >> i) & 1) end
    return r
  end)
  bits = bits:sub(1, #bits - #bits % 8)
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(b) return string.char(tonumber(b, 2)) end))
end

local ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
local function random_id(prefix, n)
  local t = {}
  for i = 1, n do
    local j = math.random(#ALNUM)
    t[i] = ALNUM:sub(j, j)
  end
  return prefix .. table.concat(t)
end

local function sqlite(path, statement)
  local out, err, code = h.sh(("sqlite3 -batch -cmd '.timeout 5000' %s %s"):format(h.shq(path),
    h.shq(statement)))
  assert(code == 0, "sqlite3 failed: " .. err)
  return (out:gsub("%s+$", ""))
end

-- Starts `cmdline` in the background; returns its pid.
local function spawn(cmdline, env)
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. h.shq(v) .. " " end
  local p = assert(io.popen(("%s%s </dev/null & echo $!"):format(prefix, cmdline)))
  local pid = tonumber(p:read("l"))
  p:close()
  return assert(pid, "no pid")
end

local function alive(pid)
  local _, _, code = h.sh("kill -0 " .. pid)
  return code == 0
end

local function wait_dead(pid, timeout)
  local t = core.monotonic() + timeout
  while alive(pid) and core.monotonic() < t do core.sleep(0.02) end
  return not alive(pid)
end

local function lines(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end -- complete lines only
  return t
end

describe("oflua.store on disk", function()
  it("leaves no connection id, key or master key in clear in the files", function()
    local dir = newdir()
    local path = dir .. "/store.db"
    local key = store.keygen()
    local s = assert(store.open({ path = path, key = key }))
    math.randomseed(os.time(), core.getpid())
    local ids = {}
    s:transaction(function()
      for i = 1, 1000 do
        local id = random_id("conn_", 24)
        ids[i] = id
        assert(s:put("conn:" .. id, id))
        assert(s:put("ref:" .. i, id))
      end
    end)
    for i = 1, 50 do assert(s:inbox_add("evt_" .. ids[i], '{"connection":"' .. ids[i] .. '"}')) end
    for i = 1, 10 do s:inbox_fail("evt_" .. ids[i], "failed for " .. ids[i], 1) end
    assert.equal(ids[7], s:get("conn:" .. ids[7]))

    local function scan(label)
      local files = { path, path .. "-wal" }
      local blob = ""
      for _, f in ipairs(files) do blob = blob .. h.slurp(f) end
      assert.is_true(#blob > 100000, label .. ": files unexpectedly small")
      for _, id in ipairs(ids) do
        assert.is_nil(blob:find(id, 1, true), label .. ": found a connection id in clear")
        -- even a fragment of one
        assert.is_nil(blob:find(id:sub(6, 17), 1, true), label .. ": found part of an id")
      end
      assert.is_nil(blob:find("conn:", 1, true), label .. ": found a key prefix in clear")
      assert.is_nil(blob:find("ref:1", 1, true), label .. ": found a key in clear")
      assert.is_nil(blob:find("evt_", 1, true), label .. ": found an event id in clear")
      assert.is_nil(blob:find("failed for", 1, true), label .. ": found a failure reason")
      assert.is_nil(blob:find(key, 1, true), label .. ": found the base64 master key")
      assert.is_nil(blob:find(unbase64(key), 1, true), label .. ": found the raw master key")
    end
    assert.is_true(#h.slurp(path .. "-wal") > 0)
    scan("open (database + WAL)")
    s:close()
    scan("closed (checkpointed)")
    assert.equal(32, #unbase64(key))
  end)
end)

-- The same across processes on every backend (PostgreSQL when
-- OFLUA_TEST_PG_URL is set); the writers take the store from arg[1], a path
-- or a URL, through store.open_env.
for _, be in ipairs(backends.all()) do
  -- a new store location: a file in dir, or a new database
  local function newstore(dir)
    if be.name == "sqlite" then return dir .. "/store.db" end
    return (be.new())
  end

  describe("oflua.store across processes on " .. be.name, function()
      it("keeps every acknowledged write across a SIGKILL of the writer", function()
        local dir = newdir()
        local path, out = newstore(dir), dir .. "/acked"
        local writer = h.write_file(dir .. "/writer.lua", [[
          local store = require("oflua.store")
          local s = assert(store.open_env({ path = arg[1] }))
          local i = 0
          while true do
            i = i + 1
            assert(s:put("k" .. i, ("value %d "):format(i):rep(20)))
            if i % 7 == 0 then assert(s:inbox_add("evt" .. i, "payload " .. i)) end
            io.stdout:write("k", i, "\n")
            io.stdout:flush()
          end
        ]])
        local key = store.keygen()
        local pid = spawn(("%s %s %s >%s 2>%s"):format(h.shq(h.bin), h.shq(writer), h.shq(path),
          h.shq(out), h.shq(dir .. "/err")), { OFLUA_STORE_KEY = key })
        local deadline = core.monotonic() + 60
        while #lines(h.slurp(out)) < 400 and core.monotonic() < deadline and alive(pid) do
          core.sleep(0.02)
        end
        local killed = alive(pid)
        h.sh("kill -KILL " .. pid)
        assert.is_true(wait_dead(pid, 10), "writer did not die")
        assert.is_true(killed, "writer stopped before the kill: " .. h.slurp(dir .. "/err"))
        local acked = lines(h.slurp(out))
        assert.is_true(#acked >= 400, "too few acknowledged writes: " .. #acked)

        if be.name == "sqlite" then assert.equal("ok", sqlite(path, "PRAGMA integrity_check")) end
        local s = assert(store.open(be.open_opts(path, key)))
        for _, k in ipairs(acked) do
          local i = tonumber(k:sub(2))
          assert.equal(("value %d "):format(i):rep(20), s:get(k), "lost acknowledged write " .. k)
          if i % 7 == 0 then assert.equal("payload " .. i, s:inbox_get("evt" .. i).payload) end
        end
        s:close()
        if be.name == "sqlite" then assert.equal("ok", sqlite(path, "PRAGMA integrity_check")) end
      end)

      it("stores an event once when two processes add it at the same time", function()
        local dir = newdir()
        local path = newstore(dir)
        local key = store.keygen()
        assert(store.open(be.open_opts(path, key))):close() -- both open an existing store
        local adder = h.write_file(dir .. "/adder.lua", [[
          local store, core = require("oflua.store"), require("oflua.core")
          local s = assert(store.open_env({ path = arg[1] }))
          -- start together: wait for the go file
          while not io.open(arg[2]) do core.sleep(0.001) end
          local new = 0
          for i = 1, 300 do
            local ok, err = s:inbox_add("evt_" .. i, "payload " .. i)
            assert(ok ~= nil, err)
            if ok then new = new + 1 end
          end
          print(new)
        ]])
        local go = dir .. "/go"
        local pids = {}
        for i = 1, 2 do
          pids[i] = spawn(("%s %s %s %s >%s 2>&1"):format(h.shq(h.bin), h.shq(adder), h.shq(path),
            h.shq(go), h.shq(dir .. "/out" .. i)), { OFLUA_STORE_KEY = key })
        end
        core.sleep(0.2)
        h.write_file(go, "")
        for i = 1, 2 do assert.is_true(wait_dead(pids[i], 60), "adder " .. i .. " hangs") end
        local n1 = tonumber((h.slurp(dir .. "/out1"):match("^(%d+)\n$")))
        local n2 = tonumber((h.slurp(dir .. "/out2"):match("^(%d+)\n$")))
        assert(n1 and n2, "adders failed: " .. h.slurp(dir .. "/out1") .. h.slurp(dir .. "/out2"))
        assert.equal(300, n1 + n2)
        assert.equal("300", be.sql(path, "SELECT count(*) FROM oflua_inbox"))
        local s = assert(store.open(be.open_opts(path, key)))
        assert.equal(300, s:inbox_stats().pending)
        local claimed = s:inbox_claim(1000, 60)
        assert.equal(300, #claimed)
        s:close()
      end)

      it("shares one file between handles in several processes with a write lock held", function()
        local dir = newdir()
        local path = newstore(dir)
        local key = store.keygen()
        local s = assert(store.open(be.open_opts(path, key, { busy_timeout_ms = 10000 })))
        -- another process writes while this one holds the write lock for a moment
        local child = h.write_file(dir .. "/child.lua", [[
          local store = require("oflua.store")
          local s = assert(store.open_env({ path = arg[1], busy_timeout_ms = 10000 }))
          assert(s:put("from child", "yes"))
          print("done")
        ]])
        local pid
        s:transaction(function(t)
          assert(t:put("from parent", "yes"))
          pid = spawn(("%s %s %s >%s 2>&1"):format(h.shq(h.bin), h.shq(child), h.shq(path),
            h.shq(dir .. "/out")), { OFLUA_STORE_KEY = key })
          core.sleep(0.3)
        end)
        assert.is_true(wait_dead(pid, 30))
        assert.equal("done\n", h.slurp(dir .. "/out"))
        assert.equal("yes", s:get("from child"))
        assert.equal("yes", s:get("from parent"))
        s:close()
      end)
  end)
end
