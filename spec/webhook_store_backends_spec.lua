-- ofauth.webhooks.app over the real oflua.store, on every backend (SQLite;
-- PostgreSQL when OFLUA_TEST_PG_URL is set): the same deliveries give the
-- same answers, inbox states and handler runs. (The app's own spec,
-- ofauth_webhooks_spec, runs it over an in-memory double.)
local h = require("spec.helper")
local cjson = require("cjson")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")
local metrics = require("ofauth.metrics")
local backends = require("spec.support.store_backends")

local SECRET = "whsec_" .. "c2VjcmV0LWZvci10aGUtYXBwLXNwZWM="
local NOW = 1700000000

teardown(function() backends.cleanup() end)

local function event(typ, id)
  return cjson.encode({ eventType = typ, live = false,
    data = { clientReferenceId = "u1", connection = { id = id or "conn_app0001", status = "active" } } })
end

for _, be in ipairs(backends.all()) do
  describe("webhook receiver app on " .. be.name, function()
    local st, target
    local clock = NOW

    local function new_app(opts)
      opts = opts or {}
      return webhooks.app({ secret = SECRET, store = st, now = function() return clock end,
        max_attempts = opts.max_attempts or 3, process = opts.process })
    end

    local function deliver(app, body, headers)
      local status, out = app:handler()({ method = "POST", body = body, headers = headers })
      return status, cjson.decode(out)
    end

    before_each(function()
      metrics.init()
      require("ofauth.log").sink = function() end
      clock = NOW
      target = be.new()
      st = assert(store.open(be.open_opts(target, store.keygen())))
    end)
    after_each(function() st:close() end)

    it("stores, answers 200 and runs the handler once for a duplicate delivery", function()
      local app = new_app()
      local seen = {}
      app:on("connection.created", function(e, ctx) seen[#seen + 1] = { e.type, ctx.meta.id } end)
      local body = event("connection.created")
      local hd = webhooks.sign_svix(body, SECRET, "msg_dup", NOW)
      local s1, b1 = deliver(app, body, hd)
      local s2, b2 = deliver(app, body, hd)
      app:drain()
      assert.equal(200, s1)
      assert.equal("accepted", b1.status)
      assert.equal(200, s2)
      assert.equal("duplicate", b2.status)
      assert.same({ { "connection.created", "msg_dup" } }, seen)
      assert.equal("done", st:inbox_get("svix:msg_dup").state)
    end)

    it("dead-letters a failing handler after max_attempts and retries it on request", function()
      local app = new_app({ max_attempts = 1 })
      local calls = 0
      app:on("*", function() calls = calls + 1; error("handler down") end)
      local body = event("connection.updated")
      assert.equal(200, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_fail", NOW))))
      app:drain()
      assert.equal(1, calls)
      local e = st:inbox_get("svix:msg_fail")
      assert.equal("dead", e.state)
      assert.matches("handler down", e.last_error)
      assert.equal(1, #st:inbox_dead())
      assert.is_true(st:inbox_retry("svix:msg_fail", clock)) -- due on the app's clock
      app:drain()
      assert.equal(2, calls)
      assert.equal("dead", st:inbox_get("svix:msg_fail").state)
    end)

    it("runs handlers in deferred mode from drain()", function()
      local app = new_app({ process = "deferred" })
      local n = 0
      app:on("*", function() n = n + 1 end)
      for i = 1, 5 do
        local body = event("connection.updated", "conn_d" .. i)
        assert.equal(200, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_d" .. i, NOW))))
      end
      app:drain()
      assert.equal(5, n)
      assert.equal(5, st:inbox_stats().done)
    end)
  end)
end

if backends.pg then
  describe("webhook receiver app on postgresql, database down", function()
    it("answers 503 (never 200) and runs no handler; recovers by itself", function()
      local ctl = assert(os.getenv("OFLUA_TEST_PG_CTL"), "OFLUA_TEST_PG_CTL")
      local st = assert(store.open(backends.pg.open_opts(backends.pg.new(), store.keygen())))
      metrics.init()
      local lines = {}
      require("ofauth.log").sink = function(line) lines[#lines + 1] = line end
      local app = webhooks.app({ secret = SECRET, store = st, now = function() return NOW end })
      local runs = 0
      app:on("*", function() runs = runs + 1 end)
      local body = event("connection.created")
      local hd = webhooks.sign_svix(body, SECRET, "msg_down", NOW)
      local _, e, c = h.sh(h.shq(ctl) .. " stop -m fast")
      assert.equal(0, c, e)
      local status = app:handler()({ method = "POST", body = body, headers = hd })
      assert.equal(503, status)
      assert.equal(0, runs)
      local logged = table.concat(lines, "\n")
      assert.matches("inbox_failed", logged)
      assert.is_nil(logged:find(backends.pg_url:match(":([^:@]+)@"), 1, true), "password in the log")
      _, e, c = h.sh(h.shq(ctl) .. " start")
      assert.equal(0, c, e)
      status = app:handler()({ method = "POST", body = body, headers = hd })
      assert.equal(200, status)
      app:drain()
      assert.equal(1, runs)
      st:close()
    end)
  end)
end
