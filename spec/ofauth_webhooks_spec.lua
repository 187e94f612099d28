local webhooks = require("ofauth.webhooks")
local fakes = require("spec.support.fakes")
local metrics = require("ofauth.metrics")
local cjson = require("cjson")

local V = cjson.decode(io.open("spec/fixtures/webhook_vectors.json"):read("a"))

local function svix_headers(v)
  return { ["svix-id"] = v.id, ["svix-timestamp"] = v.timestamp, ["svix-signature"] = v.signature }
end

describe("webhook verification", function()
  describe("svix scheme (vectors computed with openssl and node)", function()
    for i, v in ipairs(V.svix) do
      it("accepts vector " .. i, function()
        local now = tonumber(v.timestamp) + 10
        local event, meta = webhooks.verify(v.body, svix_headers(v), V.svix_secret, { now = now })
        if i == 1 then
          -- the Svix docs' example body has no event type: signature ok, then JSON check
          assert.is_nil(event)
          assert.equal("invalid_json", meta)
        else
          assert.is_table(event, meta)
          assert.equal("connection.created", event.type)
          assert.equal("svix", meta.scheme)
          assert.equal(v.id, meta.id)
          assert.equal(tonumber(v.timestamp), meta.timestamp)
        end
      end)
    end

    local v = V.svix[2]
    local now = tonumber(v.timestamp)

    it("accepts the webhook-* spelling of the headers", function()
      local h = { ["webhook-id"] = v.id, ["webhook-timestamp"] = v.timestamp,
        ["webhook-signature"] = v.signature }
      assert.is_table((webhooks.verify(v.body, h, V.svix_secret, { now = now })))
    end)

    it("accepts any matching entry among several (rotation) and header names in any case", function()
      local h = { ["Svix-Id"] = v.id, ["SVIX-TIMESTAMP"] = v.timestamp,
        ["svix-signature"] = "v1,AAAA v2,zzz " .. v.signature }
      assert.is_table((webhooks.verify(v.body, h, V.svix_secret, { now = now })))
    end)

    it("accepts a list of secrets", function()
      assert.is_table((webhooks.verify(v.body, svix_headers(v),
        { webhooks.new_secret(), V.svix_secret }, { now = now })))
    end)

    local function reason(body, h, secret, t)
      local e, r = webhooks.verify(body, h, secret or V.svix_secret, { now = t or now })
      assert.is_nil(e)
      return r
    end

    it("fails a one-byte change in body, timestamp, message id or signature", function()
      local body = v.body:sub(1, -2) .. "x"
      assert.equal("bad_signature", reason(body, svix_headers(v)))
      local h = svix_headers(v)
      h["svix-timestamp"] = tostring(now + 1)
      assert.equal("bad_signature", reason(v.body, h))
      h = svix_headers(v)
      h["svix-id"] = v.id .. "x"
      assert.equal("bad_signature", reason(v.body, h))
      h = svix_headers(v)
      local sig = h["svix-signature"]
      h["svix-signature"] = sig:sub(1, 5) .. (sig:sub(6, 6) == "A" and "B" or "A") .. sig:sub(7)
      assert.equal("bad_signature", reason(v.body, h))
    end)

    it("names every rejection", function()
      assert.equal("missing_header", reason(v.body, {}))
      assert.equal("missing_header", reason(v.body, { ["svix-id"] = v.id, ["svix-signature"] = v.signature }))
      local h = svix_headers(v)
      h["svix-timestamp"] = "12ab"
      assert.equal("malformed_header", reason(v.body, h))
      h = svix_headers(v)
      h["svix-timestamp"] = "99999999999999999999"
      assert.equal("malformed_header", reason(v.body, h))
      h = svix_headers(v)
      h["svix-signature"] = "v2,abc"
      assert.equal("malformed_header", reason(v.body, h))
      assert.equal("stale_timestamp", reason(v.body, svix_headers(v), nil, now + 301))
      assert.equal("stale_timestamp", reason(v.body, svix_headers(v), nil, now - 301))
      assert.equal("bad_secret", reason(v.body, svix_headers(v), "whsec_!!notbase64!!"))
      assert.equal("bad_secret", reason(v.body, svix_headers(v), "whsec_"))
    end)

    it("honours a custom tolerance", function()
      assert.is_table((webhooks.verify(v.body, svix_headers(v), V.svix_secret,
        { now = now + 500, tolerance = 600 })))
    end)

    it("refuses valid signatures over invalid or too deep JSON", function()
      local secret = V.svix_secret
      for _, body in ipairs({ "not json", "[1,2]", '{"data":{}}', ("["):rep(100) .. ("]"):rep(100),
        '{"type":"x","data":' .. ("["):rep(40) .. ("]"):rep(40) .. "}" }) do
        local h = webhooks.sign_svix(body, secret, "msg_1", now)
        assert.equal("invalid_json", reason(body, h))
      end
    end)

    it("round-trips sign_svix", function()
      local body = '{"eventType":"rules.updated","data":{"revision":1}}'
      local h = webhooks.sign_svix(body, V.svix_secret, nil, now)
      local e, meta = webhooks.verify(body, h, V.svix_secret, { now = now })
      assert.equal("rules.updated", e.type)
      assert.matches("^msg_", meta.id)
    end)
  end)

  describe("checklist scheme (vectors computed with openssl dgst -hmac)", function()
    for i, v in ipairs(V.checklist) do
      it("accepts vector " .. i .. " as a header string and in a header table", function()
        local now = tonumber(v.timestamp)
        local e1 = webhooks.verify(v.body, v.header, V.checklist_secret, { now = now })
        local e2, meta = webhooks.verify(v.body, { ["x-ofauth-signature"] = v.header },
          V.checklist_secret, { now = now })
        assert.is_table(e1)
        assert.is_table(e2)
        assert.equal("checklist", meta.scheme)
        assert.matches("^sha256:%x+$", meta.idempotency_key)
      end)
    end

    local v = V.checklist[1]
    local now = tonumber(v.timestamp)
    local function reason(body, header, t, opts)
      opts = opts or {}
      opts.now = t or now
      local e, r = webhooks.verify(body, header, V.checklist_secret, opts)
      assert.is_nil(e)
      return r
    end
    local sig = v.header:match("v1=(%x+)")

    it("accepts several v1 entries and the webhook-signature header with t=", function()
      local h = ("t=%s,v1=%s,v1=%s"):format(v.timestamp, ("0"):rep(64), sig)
      assert.is_table((webhooks.verify(v.body, h, V.checklist_secret, { now = now })))
      assert.is_table((webhooks.verify(v.body, { ["webhook-signature"] = h }, V.checklist_secret,
        { now = now })))
    end)

    it("derives the idempotency key from the body alone (a re-signed retry is a duplicate)", function()
      local _, m1 = webhooks.verify(v.body, v.header, V.checklist_secret, { now = now })
      local _, m2 = webhooks.verify(v.body, v.header, V.checklist_secret, { now = now + 5 })
      assert.equal(m1.idempotency_key, m2.idempotency_key)
      local later = webhooks.sign(v.body, V.checklist_secret, now + 60)
      local _, m3 = webhooks.verify(v.body, later, V.checklist_secret, { now = now + 60 })
      assert.equal(m1.idempotency_key, m3.idempotency_key)
    end)

    it("fails a one-byte change in body, timestamp or signature", function()
      assert.equal("bad_signature", reason(v.body .. " ", v.header))
      assert.equal("bad_signature", reason(v.body, ("t=%d,v1=%s"):format(now + 1, sig), now + 1))
      local flipped = sig:sub(1, -2) .. (sig:sub(-1) == "0" and "1" or "0")
      assert.equal("bad_signature", reason(v.body, ("t=%s,v1=%s"):format(v.timestamp, flipped)))
    end)

    it("names every rejection", function()
      assert.equal("malformed_header", reason(v.body, "v1=" .. sig))
      assert.equal("malformed_header", reason(v.body, "t=" .. v.timestamp))
      assert.equal("malformed_header", reason(v.body, "t=" .. v.timestamp .. ",v1=xyz"))
      assert.equal("malformed_header", reason(v.body, "t=" .. v.timestamp .. ",v1=" .. sig:sub(2)))
      assert.equal("malformed_header", reason(v.body, "t=1e9,v1=" .. sig))
      assert.equal("malformed_header", reason(v.body, "t=1,t=2,v1=" .. sig))
      assert.equal("stale_timestamp", reason(v.body, v.header, now + 1000))
      assert.equal("missing_header", reason(v.body, {}))
      assert.equal("missing_header", reason(v.body, { ["webhook-signature"] = "" }))
      assert.equal("missing_header", reason(v.body, { ["x-other"] = v.header }))
    end)

    it("reads the header name from a configurable list", function()
      assert.is_table((webhooks.verify(v.body, { ["x-custom-sig"] = v.header }, V.checklist_secret,
        { now = now, signature_headers = { "x-custom-sig" } })))
    end)

    it("round-trips sign", function()
      local body = '{"type":"connection.updated","data":{}}'
      local header = webhooks.sign(body, "s3cret-s3cret", now)
      assert.is_table((webhooks.verify(body, header, "s3cret-s3cret", { now = now })))
    end)
  end)
end)

-- These cases run the handlers inline (before the answer), which is what they
-- check; the default background mode is covered in ofauth_webhook_app_spec.
describe("webhook receiver app (process = \"inline\")", function()
  local SECRET = "whsec_" .. "c2VjcmV0LWZvci10aGUtYXBwLXNwZWM="
  local NOW = 1700000000

  local function new_app(opts)
    local st = fakes.store()
    opts = opts or {}
    local app = webhooks.app({ secret = SECRET, store = st, now = function() return NOW end,
      max_attempts = opts.max_attempts or 3, process = "inline" })
    return app, st
  end

  local function deliver(app, body, headers, method)
    local status, out = app:handler()({ method = method or "POST", body = body, headers = headers })
    return status, cjson.decode(out)
  end

  local function event(typ, id)
    return cjson.encode({ eventType = typ, live = false,
      data = { clientReferenceId = "u1", connection = { id = id or "conn_app0001", status = "active" } } })
  end

  before_each(function() metrics.init() end)

  it("verifies, stores, answers 200 and runs the handler once for a duplicate delivery", function()
    local app, st = new_app()
    local seen = {}
    app:on("connection.created", function(e, ctx) seen[#seen + 1] = { e.type, ctx.meta.id } end)
    local body = event("connection.created")
    local h = webhooks.sign_svix(body, SECRET, "msg_dup", NOW)
    local s1, b1 = deliver(app, body, h)
    local s2, b2 = deliver(app, body, h)
    assert.equal(200, s1)
    assert.equal("accepted", b1.status)
    assert.equal(200, s2)
    assert.equal("duplicate", b2.status)
    assert.same({ { "connection.created", "msg_dup" } }, seen)
    assert.equal("done", st._inbox["svix:msg_dup"].state)
    assert.equal(1, metrics.value("ofauth_webhook_deliveries_total", { "result", "duplicate" }))
  end)

  it("answers 4xx with no handler call for every rejected delivery", function()
    local app = new_app()
    local called = false
    app:on("*", function() called = true end)
    local body = event("connection.created")
    local good = webhooks.sign_svix(body, SECRET, "msg_r", NOW)
    local cases = {
      { 400, {} },
      { 401, webhooks.sign_svix(body, "whsec_b3RoZXItc2VjcmV0", "msg_r", NOW) },
      { 401, webhooks.sign_svix(body, SECRET, "msg_r", NOW - 1000) },
      { 400, { ["svix-id"] = "msg_r", ["svix-timestamp"] = "x",
        ["svix-signature"] = good["svix-signature"] } },
    }
    for _, c in ipairs(cases) do
      local status = deliver(app, body, c[2])
      assert.equal(c[1], status)
    end
    assert.equal(405, (deliver(app, body, good, "GET")))
    assert.equal(413, (deliver(app, ("x"):rep(webhooks.defaults.max_body + 1), good)))
    local bad = "not json"
    assert.equal(400, (deliver(app, bad, webhooks.sign_svix(bad, SECRET, "msg_j", NOW))))
    assert.is_false(called)
    assert.equal(1, metrics.value("ofauth_webhook_rejected_total", { "reason", "bad_signature" }))
  end)

  it("acknowledges unknown event types without failing them", function()
    local app, st = new_app()
    local body = cjson.encode({ eventType = "something.new", data = {} })
    assert.equal(200, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_u", NOW))))
    assert.equal("done", st._inbox["svix:msg_u"].state)
  end)

  it("retries a failing handler with backoff and dead-letters it after max attempts", function()
    local app, st = new_app({ max_attempts = 3 })
    local calls = 0
    app:on("connection.created", function() calls = calls + 1; error("downstream is down") end)
    local body = event("connection.created")
    assert.equal(200, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_f", NOW))))
    assert.equal(1, calls)
    assert.equal("pending", st._inbox["svix:msg_f"].state)
    -- not due yet: nothing runs
    app:process()
    assert.equal(1, calls)
    for round = 1, 4 do -- each round, time has passed beyond the backoff
      st.clock = function() return round * 1e6 end
      app:drain()
    end
    assert.equal(3, calls)
    assert.equal("dead", st._inbox["svix:msg_f"].state)
    local dead = st:inbox_dead()
    assert.equal(1, #dead)
    assert.matches("downstream is down", dead[1].last_error)
    assert.equal(1, metrics.value("ofauth_webhook_dead_lettered_total"))
    assert.equal(3, metrics.value("ofauth_webhook_handler_failures_total"))
  end)

  it("runs a retry that came due on the next delivery", function()
    local t = NOW
    local st = fakes.store()
    st.clock = function() return t end
    local app = webhooks.app({ secret = SECRET, store = st, now = function() return t end, max_attempts = 3,
      tolerance = 1e6, process = "inline" })
    local fail, calls = true, {}
    app:on("connection.created", function(_, ctx)
      calls[#calls + 1] = ctx.id
      if fail then error("flaky") end
    end)
    local b1 = event("connection.created", "conn_r1")
    assert.equal(200, (deliver(app, b1, webhooks.sign_svix(b1, SECRET, "msg_r1", NOW))))
    fail = false
    local b0 = event("connection.created", "conn_r0") -- before the retry is due: not run
    assert.equal(200, (deliver(app, b0, webhooks.sign_svix(b0, SECRET, "msg_r0", NOW))))
    t = t + 10 -- the retry is due
    local b2 = event("connection.created", "conn_r2")
    assert.equal(200, (deliver(app, b2, webhooks.sign_svix(b2, SECRET, "msg_r2", NOW))))
    assert.same({ "svix:msg_r1", "svix:msg_r0", "svix:msg_r2", "svix:msg_r1" }, calls)
    assert.equal("done", st._inbox["svix:msg_r1"].state)
  end)

  it("in deferred mode answers once stored and runs handlers from drain()", function()
    local st = fakes.store()
    local app = webhooks.app({ secret = SECRET, store = st, now = function() return NOW end,
      process = "deferred" })
    local n = 0
    app:on("*", function() n = n + 1 end)
    local body = event("connection.created")
    assert.equal(200, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_d", NOW))))
    assert.equal(0, n)
    assert.equal("pending", st._inbox["svix:msg_d"].state)
    assert.equal(1, (app:drain()))
    assert.equal(1, n)
    assert.equal("done", st._inbox["svix:msg_d"].state)
    assert.has_error(function() webhooks.app({ secret = SECRET, store = st, process = "later" }) end)
  end)

  it("answers 503 (so the sender retries) when the inbox cannot store the event", function()
    local app, st = new_app()
    st.inbox_add = function() return nil, "disk full" end
    local body = event("connection.created")
    assert.equal(503, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_s", NOW))))
  end)

  it("answers 500 for a webhook secret that is not valid base64", function()
    local st = fakes.store()
    local app = webhooks.app({ secret = "whsec_%%%", store = st, now = function() return NOW end })
    local body = event("connection.created")
    assert.equal(500, (deliver(app, body, webhooks.sign_svix(body, SECRET, "msg_b", NOW))))
  end)

  it("with the default connection handlers, stores and expires connections", function()
    local app, st = new_app()
    local reauth = {}
    local conns = require("ofauth.connections").new({ store = st, now = function() return NOW end,
      on_reauth_required = function(rec) reauth[#reauth + 1] = rec.user_id end })
    conns:install(app)
    local created = event("connection.created", "conn_flow0001")
    deliver(app, created, webhooks.sign_svix(created, SECRET, "msg_c1", NOW))
    assert.equal("active", conns:get("u1").status)
    assert.equal("conn_flow0001", conns:get("u1").connection_id)
    local expired = cjson.encode({ eventType = "connection.expired",
      data = { clientReferenceId = cjson.null, connection = { id = "conn_flow0001", status = "expired" } } })
    deliver(app, expired, webhooks.sign_svix(expired, SECRET, "msg_c2", NOW))
    assert.equal("expired", conns:get("u1").status)
    assert.same({ "u1" }, reauth)
  end)
end)
