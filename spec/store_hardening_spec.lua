-- oflua.store review fixes, on every backend (SQLite always; PostgreSQL when
-- OFLUA_TEST_PG_URL is set, as under scripts/test): option strings that only
-- an __index metamethod holds, passwords kept out of labels and errors,
-- claim tokens fencing late inbox_done/inbox_fail calls.
local store = require("oflua.store")
local backends = require("spec.support.store_backends")

teardown(function() backends.cleanup() end)

-- A table whose fields exist only as fresh strings made by __index: nothing
-- else references them, so a collection right after the read frees them.
local function fresh(fields)
  return setmetatable({}, { __index = function(_, k)
    local v = fields[k]
    if type(v) == "string" then return (v .. "#"):sub(1, -2) end
    return v
  end })
end

local function with_eager_gc(f)
  collectgarbage("incremental")
  local pause = collectgarbage("setpause", 1)
  local mul = collectgarbage("setstepmul", 1000)
  local ok, err = pcall(f)
  collectgarbage("setpause", pause)
  collectgarbage("setstepmul", mul)
  assert(ok, err)
end

describe("oflua.store PostgreSQL labels", function()
  -- Nothing listens on port 1: every open fails at connect time, and the
  -- handle (or the error) carries the label.
  local secret = "S3cr3t-pw"
  local forms = {
    { "postgresql://alice:pa?ss" .. secret .. "@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:" .. secret .. "?x/y@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:a%2Fb%23c%40d%3F" .. secret .. "@127.0.0.1:1/db?sslmode=disable",
      "postgresql://alice@127.0.0.1:1/db" },
    { "postgres://alice:x@127.0.0.1:1/db?password=" .. secret, "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql:///db?host=127.0.0.1&port=1&user=bob&password=" .. secret,
      "postgresql://bob@127.0.0.1:1/db" },
    { "postgresql://alice:p#" .. secret .. "@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:" .. secret .. "@[::1]:1,127.0.0.1:1/db", nil },
  }
  for _, f in ipairs(forms) do
    it("keeps the password out of tostring, info and errors: " .. f[1]:gsub(secret, "<secret>"), function()
      local s, err = store.open({ url = f[1], key = store.keygen(), connect_timeout_s = 1 })
      local texts = { tostring(err) }
      if s then
        texts[#texts + 1] = tostring(s)
        local ok, i = pcall(s.info, s)
        texts[#texts + 1] = ok and tostring(i and i.url) or tostring(i)
        local v, e = s:get("k")
        assert.is_nil(v)
        texts[#texts + 1] = tostring(e)
        texts[#texts + 1] = tostring(select(2, s:inbox_claim(1, 10)))
        if f[2] then assert.matches(f[2], tostring(s), 1, true) end
        s:close()
      end
      for _, t in ipairs(texts) do
        assert.is_nil(t:find(secret, 1, true), t)
        assert.is_nil(t:find("pa?ss", 1, true), t)
      end
    end)
  end

  it("rejects a key=value conninfo string as url without echoing it", function()
    local ok, err = pcall(store.open, { url = "host=127.0.0.1 port=1 password=S3cr3t-pw", key = store.keygen() })
    assert.is_false(ok)
    assert.is_nil(tostring(err):find("S3cr3t", 1, true))
  end)
end)

for _, be in ipairs(backends.all()) do
  describe("oflua.store hardening on " .. be.name, function()
    it("keeps option strings returned by __index alive while opening", function()
      local target = be.new()
      local key = store.keygen()
      assert(store.open(be.open_opts(target, key))):close()
      with_eager_gc(function()
        for _ = 1, 30 do
          local o = be.open_opts(target, key)
          o.namespace = ("n"):rep(60)
          local s = assert(store.open(fresh(o)))
          assert.equal(("n"):rep(60), s:info().namespace)
          s:close()
        end
      end)
    end)

    it("keeps inbox_add_many ids and payloads returned by __index alive", function()
      local s = assert(store.open(be.open_opts(be.new(), store.keygen())))
      local items = {}
      for i = 1, 200 do
        items[i] = fresh({ id = ("event-%d-"):format(i) .. ("x"):rep(40), payload = ("p"):rep(1000) .. i })
      end
      with_eager_gc(function()
        local got = assert(s:inbox_add_many(items, 100))
        assert.equal(200, #got)
      end)
      for _, i in ipairs({ 1, 77, 200 }) do
        assert.equal(("p"):rep(1000) .. i, s:inbox_get(("event-%d-"):format(i) .. ("x"):rep(40)).payload)
      end
      s:close()
    end)
  end)
end

for _, be in ipairs(backends.all()) do
  describe("inbox claim tokens on " .. be.name, function()
    local function two_handles()
      local target = be.new()
      local key = store.keygen()
      local a = assert(store.open(be.open_opts(target, key)))
      local b = assert(store.open(be.open_opts(target, key)))
      return a, b
    end

    it("a late inbox_fail with an expired claim changes nothing", function()
      local a, b = two_handles()
      assert(a:inbox_add("e1", "payload", 1000))
      local ca = assert(a:inbox_claim(1, 10, 1000))
      assert.equal(1, #ca)
      assert.is_string(ca[1].claim)
      local cb = assert(b:inbox_claim(1, 10, 1011)) -- A's lease ran out: B takes it
      assert.equal(1, #cb)
      assert.not_equal(ca[1].claim, cb[1].claim)
      assert.is_true(b:inbox_done("e1", 1012, cb[1].claim))
      local state, err, kind = a:inbox_fail("e1", "timeout", 5, 1013, nil, ca[1].claim)
      assert.is_nil(state)
      assert.equal("lost", kind)
      assert.matches("claim on this event was lost", err)
      assert.equal("done", a:inbox_get("e1").state)
      assert.same({}, assert(a:inbox_claim(1, 10, 1100)))
      a:close(); b:close()
    end)

    it("a late inbox_done with an expired claim changes nothing", function()
      local a, b = two_handles()
      assert(a:inbox_add("e1", "payload", 1000))
      local ca = assert(a:inbox_claim(1, 10, 1000))
      local cb = assert(b:inbox_claim(1, 10, 1011))
      local _, err, kind = a:inbox_done("e1", 1012, ca[1].claim)
      assert.equal("lost", kind, err)
      assert.equal("claimed", b:inbox_get("e1").state)
      local state = assert(b:inbox_fail("e1", "boom", 5, 1013, 0, cb[1].claim))
      assert.equal("pending", state)
      -- a stale token of an event back to pending, done or retried: lost too
      assert.equal("lost", select(3, a:inbox_done("e1", 1014, cb[1].claim)))
      assert.equal("lost", select(3, a:inbox_fail("e1", "x", 5, 1014, nil, cb[1].claim)))
      assert.equal("pending", a:inbox_get("e1").state)
      a:close(); b:close()
    end)

    it("the claim of an event inserted with lease_s fences like inbox_claim's", function()
      local a, b = two_handles()
      local new, claim = a:inbox_add("e1", "p", 1000, 10)
      assert.is_true(new)
      assert.is_string(claim)
      local got, many = assert(a:inbox_add_many({ { id = "e2", payload = "p" } }, 1000, 10))
      assert.same({ true }, got)
      assert.is_string(many)
      local cb = assert(b:inbox_claim(5, 10, 1011))
      assert.equal(2, #cb)
      assert.equal("lost", select(3, a:inbox_done("e1", 1012, claim)))
      assert.equal("lost", select(3, a:inbox_done("e2", 1012, many)))
      for _, it in ipairs(cb) do assert.is_true(b:inbox_done(it.id, 1013, it.claim)) end
      assert.equal(2, a:inbox_stats().done)
      a:close(); b:close()
    end)

    it("without a token done and fail behave as before, and bad tokens are refused", function()
      local s = assert(store.open(be.open_opts(be.new(), store.keygen())))
      assert(s:inbox_add("e1", "p", 1000))
      local c = assert(s:inbox_claim(1, 10, 1000))
      assert.is_true(s:inbox_done("e1", 1001, c[1].claim))
      assert.is_true(s:inbox_done("e1", 1002))
      assert.has_error(function() s:inbox_done("e1", 1003, "nonsense") end)
      assert.has_error(function() s:inbox_fail("e1", "x", 5, 1003, nil, "1:") end)
      s:close()
    end)
  end)
end

describe("oflua.store in an oflua.server handler", function()
  it("waits for a locked SQLite database off the I/O thread: other requests are answered", function()
    local h = require("spec.helper")
    local server = require("oflua.server")
    local dir = h.tmpdir()
    local db = dir .. "/store.db"
    local key = store.keygen()
    assert(store.open({ path = db, key = key })):close()
    local script = h.write_file(dir .. "/handler.lua", ([[
local store = require("oflua.store")
local s = assert(store.open{path = %q, key = %q, busy_timeout_ms = 60000})
return function(req)
  if req.path == "/slow" then
    io.open(%q, "w"):close() -- the handler runs: the put below waits for the lock
    local ok, err = s:put("k", "v")
    return 200, "slow " .. tostring(ok) .. " " .. tostring(err) .. "\n"
  end
  return 200, "fast\n"
end
]]):format(db, key, dir .. "/started"))
    -- one I/O thread that runs handlers inline; two workers (one is free)
    local srv = assert(server.listen({ script = script, port = 0, workers = 2, io_threads = 1 }))
    local url = "http://127.0.0.1:" .. srv:port()
    -- Another process holds the write lock until the test says so; /slow
    -- waits for it; /fast must be answered meanwhile (before the lock goes).
    local sh = ([[
set -u
d=%s
mkfifo "$d/release"
{ echo "BEGIN IMMEDIATE;"; echo "SELECT 'locked';"; cat "$d/release" >/dev/null; echo "COMMIT;"; } \
  | sqlite3 %s > "$d/lock.out" &
for _ in $(seq 100); do grep -q locked "$d/lock.out" && break; sleep 0.1; done
curl -s --max-time 60 %s/slow > "$d/slow.out" &
slow=$!
for _ in $(seq 100); do [ -e "$d/started" ] && break; sleep 0.1; done
fast=$(curl -s --max-time 30 %s/fast)
echo "fast=$fast"
echo "slow_before_release=$(cat "$d/slow.out")"
echo > "$d/release"
wait $slow
echo "slow=$(cat "$d/slow.out")"
]]):format(h.shq(dir), h.shq(db), url, url)
    local out = h.sh("bash -c " .. h.shq(sh))
    srv:stop(1)
    h.sh("rm -rf " .. h.shq(dir))
    assert.matches("fast=fast", out, 1, true)
    assert.matches("slow_before_release=\n", out, 1, true)
    assert.matches("slow=slow true nil", out, 1, true)
  end)
end)

if backends.pg_url then
  describe("oflua.store PostgreSQL timeouts", function()
    it("statement_timeout_ms turns a statement stuck on the server into unavailable", function()
      local pg = backends.all()[2]
      local target = pg.new()
      local key = store.keygen()
      local s = assert(store.open({ url = target, key = key, statement_timeout_ms = 300,
        busy_timeout_ms = 60000 }))
      assert(s:put("k", "v"))
      -- a second session holds the row lock far longer than the statement may wait
      local holder = assert(store.open({ url = target, key = key }))
      local ok, err, kind
      pcall(holder.transaction, holder, function(hs)
        assert(hs:put("k", "held"))
        ok, err, kind = s:put("k", "mine")
      end)
      assert.is_nil(ok)
      assert.equal("unavailable", kind, err)
      assert.matches("statement timeout", err)
      holder:close()
      assert(s:put("k", "after")) -- the handle works again
      s:close()
    end)

    it("validates statement_timeout_ms", function()
      assert.has_error(function() store.open({ url = "postgresql://u@127.0.0.1:1/db", key = store.keygen(),
        statement_timeout_ms = -1 }) end)
    end)
  end)
end

describe("oflua.store key text (one base64 decoder: crypto_codec.c)", function()
  local path
  before_each(function() path = require("spec.helper").tmpdir() .. "/k.db" end)
  local function refused(text)
    local s, err, kind = store.open({ path = path, key = text })
    assert.is_nil(s)
    assert.equal("invalid", kind)
    assert.matches("base64 text of exactly 32 bytes", err)
    local bare = text:gsub("^%s+", ""):gsub("%s+$", "")
    if #bare > 8 then assert.is_nil(err:find(bare:sub(1, 20), 1, true), err) end
  end

  it("accepts keygen's text with surrounding white space, refuses near misses", function()
    local k = store.keygen()
    assert(store.open({ path = path, key = "\n " .. k .. " \r\n" })):close()
    refused(k:sub(1, 43))                          -- no padding
    refused(k:sub(1, 42) .. "==")                  -- 31 bytes
    refused(k .. "AAAA")                           -- too long
    refused(k:sub(1, 10) .. "-" .. k:sub(12))      -- URL-safe alphabet
    refused(k:sub(1, 10) .. " " .. k:sub(12))      -- space inside
    -- the 43rd character carries 2 bits past the 32 bytes: they must be zero
    local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    local v = alphabet:find(k:sub(43, 43), 1, true) - 1
    refused(k:sub(1, 42) .. alphabet:sub(v + 2, v + 2) .. "=")
  end)
end)
