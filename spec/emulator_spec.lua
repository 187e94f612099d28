-- The OFAuth emulator's behaviour, driven in this VM: requests go straight to
-- app:handle, webhooks to a scripted transport, time comes from a fake clock.
-- (emulator_e2e_spec.lua runs the same pieces over real sockets.)
local emulator = require("ofauth.emulator")
local config = require("ofauth.emulator.config")
local app_mod = require("ofauth.emulator.app")
local faults = require("ofauth.emulator.faults")
local subscribers = require("ofauth.emulator.subscribers")
local link = require("ofauth.link")
local cjson = require("cjson")
local helper = require("spec.helper")

local KEY, LIVE_KEY = "sk_test_spec_key_1", "sk_live_spec_key_2"
local REDIRECT = "http://127.0.0.1:3000/ofauth/callback"

local fake_schemes = {
  sign = function(_, secret, t) return ("t=%d,v1=fake-%s"):format(t, secret) end,
  sign_svix = function(_, _, id, t)
    return { ["svix-id"] = id, ["svix-timestamp"] = tostring(t), ["svix-signature"] = "v1,fake" }
  end,
}

-- A receiver answering statuses from a list (then 200), recording requests.
local function receiver(statuses)
  local r = { requests = {}, statuses = statuses or {} }
  r.request = function(req)
    r.requests[#r.requests + 1] = req
    local s = table.remove(r.statuses, 1) or 200
    if type(s) == "table" then return nil, s end
    return { status = s, headers = {}, body = "" }
  end
  return r
end

local function new(opts, extra)
  opts = opts or {}
  opts.api_keys = opts.api_keys or { KEY, LIVE_KEY }
  local clock = { t = 1767225600 } -- 2026-01-01T00:00:00Z
  local seq = 0
  local rcv = receiver(extra and extra.statuses)
  local logs = {}
  local deps = {
    now = function() return clock.t end,
    sleep = function(s) clock.slept = (clock.slept or 0) + s; clock.t = clock.t + s end,
    random_hex = function(n)
      seq = seq + 1
      return ("%0" .. (2 * n) .. "x"):format(seq)
    end,
    request = rcv.request,
    schemes = fake_schemes,
    can_drop = extra and extra.can_drop,
    log = function(line) logs[#logs + 1] = line end,
  }
  local inst = assert(emulator.new_local(opts, deps))
  inst.clock, inst.rcv, inst.logs = clock, rcv, logs
  -- call(method, path, {body=, headers=, query=, key=}) -> status, decoded body, headers, raw
  function inst.call(method, path, o)
    o = o or {}
    local headers = o.headers or {}
    if o.key ~= false then headers.apikey = headers.apikey or o.key or KEY end
    local body = o.body
    if type(body) == "table" then body = cjson.encode(body) end
    local status, raw, h = inst.app:handle({
      method = method, path = path, query = o.query or {}, headers = headers, body = body or "",
    })
    local ok, decoded = pcall(cjson.decode, raw or "")
    return status, ok and decoded or nil, h or {}, raw
  end
  function inst.link(o)
    o = o or {}
    local status, b = inst.call("POST", "/v2/link/init", { key = o.key, body = {
      redirectUrl = o.redirectUrl or REDIRECT, clientReferenceId = o.ref or "user-1",
      connectionId = o.connectionId,
    } })
    assert.equal(200, status)
    return b, b.url:match("/link/([^/]+)$")
  end
  function inst.connect(ref, o)
    local _, session = inst.link({ ref = ref, key = o and o.key })
    local status, b = inst.call("POST", "/emulator/link/" .. session .. "/complete", {
      body = { outcome = "success" },
    })
    assert.equal(200, status)
    return b.connectionId, b
  end
  return inst
end

local function query_of(url)
  return url:match("%?([^#]*)")
end

describe("emulator configuration", function()
  it("fills documented defaults", function()
    local cfg = assert(config.normalize({}))
    assert.equal("127.0.0.1", cfg.host)
    assert.equal("svix", cfg.signing)
    assert.equal("sdk", cfg.error_shape)
    assert.equal(5, cfg.webhook_attempts)
    assert.same({ "sk_test_emulator" }, cfg.api_keys)
  end)

  it("refuses unknown options and bad values with a clear message", function()
    assert.matches("unknown option", select(2, config.normalize({ prot = 1 })))
    assert.matches("signing", select(2, config.normalize({ signing = "hmac" })))
    assert.matches("error_shape", select(2, config.normalize({ error_shape = "x" })))
    assert.matches("webhook_attempts", select(2, config.normalize({ webhook_attempts = 0 })))
    assert.matches("api_keys", select(2, config.normalize({ api_keys = {} })))
    assert.matches("redirect_uris", select(2, config.normalize({ redirect_uris = { "ftp://x" } })))
    assert.matches("delivery", select(2, config.normalize({ delivery = "thread" })))
  end)

  it("needs a secret with a webhook URL, and whsec_<base64> for svix", function()
    local _, err = config.normalize({ webhook_url = "http://127.0.0.1:9/h" })
    assert.matches("secret", err)
    _, err = config.normalize({ webhook_url = "http://127.0.0.1:9/h", webhook_secret = "plain" })
    assert.matches("whsec_", err)
    assert.is_nil(err:find("plain", 1, true)) -- the secret is never echoed
    assert.is_table(config.normalize({ webhook_url = "http://127.0.0.1:9/h", webhook_secret = "plain",
      signing = "checklist" }))
  end)

  it("derives the environment from the key prefix", function()
    assert.equal("sandbox", config.environment("sk_test_abc"))
    assert.equal("sandbox", config.environment("sandbox_abc"))
    assert.equal("production", config.environment("sk_live_abc"))
    assert.equal("production", config.environment("live_abc"))
    assert.equal("sandbox", config.environment("anything-else"))
  end)
end)

describe("emulator authentication", function()
  it("refuses a missing key with 401 {error, code, details}", function()
    local e = new()
    local status, b = e.call("GET", "/v2/account/whoami", { key = false })
    assert.equal(401, status)
    assert.equal("UNAUTHORIZED", b.code)
    assert.is_string(b.error)
    assert.is_table(b.details)
  end)

  it("refuses a wrong key without echoing it", function()
    local e = new()
    local status, b, _, raw = e.call("GET", "/v2/account/connections", { key = "sk_test_wrong_key" })
    assert.equal(401, status)
    assert.equal("UNAUTHORIZED", b.code)
    assert.is_nil(raw:find("sk_test_wrong_key", 1, true))
  end)

  it("reads the apikey header case-insensitively", function()
    local e = new()
    local status = e.call("GET", "/v2/account/whoami", { key = false, headers = { ApiKey = KEY } })
    assert.equal(200, status)
  end)

  it("answers {type, message} for every error with error_shape = checklist", function()
    local e = new({ error_shape = "checklist" })
    local status, b = e.call("GET", "/v2/account/whoami", { key = "nope" })
    assert.equal(401, status)
    assert.same({ type = "UNAUTHORIZED", message = b.message }, b)
    status, b = e.call("GET", "/v2/account/connections/conn_nothere")
    assert.equal(404, status)
    assert.equal("NOT_FOUND", b.type)
    status, b = e.call("GET", "/emulator/nothing")
    assert.equal(404, status)
    assert.equal("NOT_FOUND", b.type)
  end)

  it("answers 405 with Allow for a known path and another method", function()
    local e = new()
    local status, b, h = e.call("PUT", "/v2/account/whoami")
    assert.equal(405, status)
    assert.equal("METHOD_NOT_ALLOWED", b.code)
    assert.equal("GET", h.allow)
  end)
end)

describe("emulator whoami", function()
  it("tells sandbox and production keys apart", function()
    local e = new()
    local _, sb = e.call("GET", "/v2/account/whoami")
    local _, live = e.call("GET", "/v2/account/whoami", { key = LIVE_KEY })
    assert.equal("sandbox", sb.environment)
    assert.is_false(sb.live)
    assert.equal("production", live.environment)
    assert.is_true(live.live)
    assert.are_not.equal(sb.id, live.id)
    assert.is_string(sb.name)
    assert.is_table(sb.permissions)
  end)
end)

describe("emulator Link", function()
  it("starts a session with url on the emulator, expiresAt and clientSecret", function()
    local e = new()
    local b = e.link()
    assert.matches("^http://127%.0%.0%.1:%d+/link/ls_", b.url)
    assert.equal("2026-01-01T01:00:00Z", b.expiresAt)
    assert.matches("^lcs_", b.clientSecret)
    local status, s = e.call("GET", "/v2/link/" .. b.clientSecret)
    assert.equal(200, status)
    assert.equal("initialized", s.status) -- pending once its page is opened
  end)

  it("refuses a redirectUrl outside the allow-list", function()
    local e = new({ redirect_uris = { "https://app.example.com/cb" } })
    local status, b = e.call("POST", "/v2/link/init", { body = {
      redirectUrl = "https://evil.example.com/cb", clientReferenceId = "u" } })
    assert.equal(400, status)
    assert.equal("VALIDATION_ERROR", b.code)
    assert.equal("redirectUrl", b.details.field)
    -- the registered URI matches, with or without a query
    assert.equal(200, (e.call("POST", "/v2/link/init", { body = {
      redirectUrl = "https://app.example.com/cb?x=1", clientReferenceId = "u" } })))
    -- the default list (none configured) is loopback only
    local d = new()
    assert.equal(400, (d.call("POST", "/v2/link/init", { body = {
      redirectUrl = "https://app.example.com/cb", clientReferenceId = "u" } })))
    assert.equal(400, (d.call("POST", "/v2/link/init", { body = {
      redirectUrl = "http://127.0.0.1:80@evil.example.com/", clientReferenceId = "u" } })))
  end)

  it("validates clientReferenceId, connectionId, geolocation and the body", function()
    local e = new()
    local status, b = e.call("POST", "/v2/link/init", { body = { redirectUrl = REDIRECT } })
    assert.equal(400, status)
    assert.equal("clientReferenceId", b.details.field)
    status, b = e.call("POST", "/v2/link/init", { body = {
      redirectUrl = REDIRECT, clientReferenceId = "u", connectionId = "conn_unknown" } })
    assert.equal(404, status)
    assert.equal("connectionId", b.details.field)
    status = e.call("POST", "/v2/link/init", { body = {
      redirectUrl = REDIRECT, clientReferenceId = "u", geolocation = { country = "France" } } })
    assert.equal(400, status)
    status = e.call("POST", "/v2/link/init", { body = {
      redirectUrl = REDIRECT, clientReferenceId = "u", geolocation = { country = "us", state = "CA" } } })
    assert.equal(200, status)
    status, b = e.call("POST", "/v2/link/init", { body = "{not json" })
    assert.equal(400, status)
    assert.equal("VALIDATION_ERROR", b.code)
  end)

  it("completes with success: redirect parameters, connection, connection.created", function()
    local e = new()
    local init, session = e.link({ ref = "user-42" })
    local status, b, h = e.call("POST", "/emulator/link/" .. session .. "/complete", {
      body = { outcome = "success" } })
    assert.equal(200, status)
    assert.equal(b.redirectUrl, h.location)
    assert.equal(REDIRECT, b.redirectUrl:match("^[^?]*"))
    local cb = assert(link.parse_callback(query_of(b.redirectUrl)))
    assert.equal("success", cb.status)
    assert.equal("user-42", cb.client_reference_id)
    assert.matches("^conn_", cb.connection_id)
    assert.equal(b.connectionId, cb.connection_id)
    local _, c = e.call("GET", "/v2/account/connections/" .. cb.connection_id)
    assert.equal("active", c.status)
    assert.equal("user-42", c.clientReferenceId)
    local _, s = e.call("GET", "/v2/link/" .. init.clientSecret)
    assert.equal("completed", s.status)
    assert.equal(cb.connection_id, s.data.connectionId)
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal(1, #d.list)
    assert.equal("connection.created", d.list[1].type)
  end)

  it("completes with cancelled (step) and error (error_code), without a connection", function()
    local e = new()
    local _, s1 = e.link({ ref = "u1" })
    local _, b = e.call("POST", "/emulator/link/" .. s1 .. "/complete", {
      body = { outcome = "cancelled", step = "2fa" } })
    local cb = link.parse_callback(query_of(b.redirectUrl))
    assert.same({ status = "cancelled", client_reference_id = "u1", step = "2fa" }, cb)
    local _, s2 = e.link({ ref = "u2" })
    _, b = e.call("POST", "/emulator/link/" .. s2 .. "/complete", {
      body = { outcome = "error", error_code = "ACCOUNT_LOCKED" } })
    cb = link.parse_callback(query_of(b.redirectUrl))
    assert.same({ status = "error", client_reference_id = "u2", error_code = "ACCOUNT_LOCKED" }, cb)
    local _, l = e.call("GET", "/v2/account/connections")
    assert.equal(0, #l.list)
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal(0, #d.list)
  end)

  it("keeps a query already on redirectUrl and defaults step / error_code", function()
    assert.equal("http://h/cb?a=1&status=cancelled&step=login#f",
      app_mod.callback_url("http://h/cb?a=1#f", { status = "cancelled", step = "login" }))
    local e = new()
    local _, s = e.link()
    local _, b = e.call("POST", "/emulator/link/" .. s .. "/complete", { body = { outcome = "error" } })
    assert.equal(app_mod.DEFAULT_ERROR_CODE, link.parse_callback(query_of(b.redirectUrl)).error_code)
  end)

  it("reconnects an expired connection and sends connection.updated", function()
    local e = new()
    local id = e.connect("user-7")
    e.call("POST", "/v2/account/connections/" .. id .. "/invalidate")
    local _, session = e.link({ ref = "user-7", connectionId = id })
    local _, b = e.call("POST", "/emulator/link/" .. session .. "/complete", { body = {} })
    assert.equal(id, b.connectionId)
    local _, c = e.call("GET", "/v2/account/connections/" .. id)
    assert.equal("active", c.status)
    assert.equal(cjson.null, c.expiredAt)
    local _, d = e.call("GET", "/emulator/deliveries")
    local types = {}
    for i, r in ipairs(d.list) do types[i] = r.type end
    assert.same({ "connection.created", "connection.expired", "connection.updated" }, types)
  end)

  it("refuses a second completion and an expired session", function()
    local e = new()
    local _, s = e.link()
    e.call("POST", "/emulator/link/" .. s .. "/complete", { body = {} })
    local status, b = e.call("POST", "/emulator/link/" .. s .. "/complete", { body = {} })
    assert.equal(409, status)
    assert.equal("CONFLICT", b.code)
    local init, s2 = e.link()
    e.clock.t = e.clock.t + 3601
    status, b = e.call("POST", "/emulator/link/" .. s2 .. "/complete", { body = {} })
    assert.equal(410, status)
    assert.equal("LINK_SESSION_EXPIRED", b.code)
    local _, st = e.call("GET", "/v2/link/" .. init.clientSecret)
    assert.equal("expired", st.status)
    assert.equal(404, (e.call("POST", "/emulator/link/ls_nope/complete", { body = {} })))
    assert.equal(400, (select(1, e.call("POST", "/emulator/link/" .. e.link().url:match("ls_%w+")
      .. "/complete", { body = { outcome = "maybe" } }))))
  end)

  it("cancels a session with DELETE /v2/link/{clientSecret}", function()
    local e = new()
    local init, s = e.link()
    local status, b = e.call("DELETE", "/v2/link/" .. init.clientSecret)
    assert.equal(200, status)
    assert.equal("cancelled", b.status)
    assert.equal(409, (e.call("POST", "/emulator/link/" .. s .. "/complete", { body = {} })))
    assert.equal(404, (e.call("GET", "/v2/link/lcs_unknown")))
  end)

  it("serves a hosted page whose form completes the session with a 303", function()
    local e = new()
    local _, s = e.link({ ref = "web-user" })
    local status, _, h, html = e.call("GET", "/link/" .. s, { key = false })
    assert.equal(200, status)
    assert.matches("text/html", h["content-type"])
    assert.matches('<form method="post" action="/link/' .. s .. '"', html, 1, true)
    assert.matches('value="success"', html, 1, true)
    local st, _, h2 = e.call("POST", "/link/" .. s, { key = false,
      headers = { ["content-type"] = "application/x-www-form-urlencoded" },
      body = "outcome=cancelled&step=permissions&error_code=LOGIN_FAILED" })
    assert.equal(303, st)
    assert.same({ status = "cancelled", client_reference_id = "web-user", step = "permissions" },
      link.parse_callback(query_of(h2.location)))
    assert.equal(410, (e.call("GET", "/link/" .. s, { key = false })))
  end)
end)

describe("emulator connections", function()
  local function page_all(e, path, limit)
    local pages, offset = {}, 0
    repeat
      local status, b = e.call("GET", path,
        { query = { limit = tostring(limit), offset = tostring(offset) } })
      assert.equal(200, status)
      pages[#pages + 1] = b
      if b.hasMore then
        assert.equal(offset + #b.list, b.nextOffset)
        offset = b.nextOffset
      else
        assert.is_nil(b.nextOffset)
      end
    until not b.hasMore
    return pages
  end

  for _, path in ipairs({ "/v2/account/connections", "/v2/connections" }) do
    it("pages through " .. path .. " with limit / offset / hasMore / nextOffset", function()
      local e = new()
      local ids = {}
      for i = 1, 23 do ids[i] = e.connect("user-" .. i) end
      local pages = page_all(e, path, 10)
      assert.equal(3, #pages)
      assert.same({ 10, 10, 3 }, { #pages[1].list, #pages[2].list, #pages[3].list })
      local seen = {}
      for _, p in ipairs(pages) do
        for _, c in ipairs(p.list) do seen[#seen + 1] = c.id end
      end
      assert.same(ids, seen)
      local c = pages[1].list[1]
      for _, f in ipairs({ "id", "status", "clientReferenceId", "permissions", "userData", "createdAt",
        "updatedAt", "expiredAt", "lastCheckedAt", "imported" }) do
        assert.is_not_nil(c[f], f)
      end
      for _, f in ipairs({ "id", "name", "username", "avatar" }) do assert.is_string(c.userData[f]) end
    end)
  end

  it("answers an empty list as [] and clamps or refuses bad limits", function()
    local e = new({ list_limit_max = 5, list_limit_default = 2 })
    local _, _, _, raw = e.call("GET", "/v2/connections")
    assert.matches('"list":%[%]', raw)
    for i = 1, 7 do e.connect("u" .. i) end
    local _, b = e.call("GET", "/v2/connections", { query = { limit = "1000" } })
    assert.equal(5, #b.list)
    assert.equal(400, (e.call("GET", "/v2/connections", { query = { limit = "0" } })))
    assert.equal(400, (e.call("GET", "/v2/connections", { query = { limit = "x" } })))
    assert.equal(400, (e.call("GET", "/v2/connections", { query = { offset = "-1" } })))
    assert.equal(400, (e.call("GET", "/v2/connections", { query = { status = "weird" } })))
  end)

  it("gets, deletes and invalidates one connection", function()
    local e = new()
    local id = e.connect("u1")
    local id2 = e.connect("u2")
    local status, c = e.call("POST", "/v2/account/connections/" .. id2 .. "/invalidate")
    assert.equal(200, status)
    assert.equal("expired", c.status)
    assert.is_string(c.expiredAt)
    local _, l = e.call("GET", "/v2/connections", { query = { status = "expired" } })
    assert.equal(1, #l.list)
    assert.equal(200, (e.call("DELETE", "/v2/account/connections/" .. id)))
    assert.equal(404, (e.call("GET", "/v2/account/connections/" .. id)))
    assert.equal(404, (e.call("DELETE", "/v2/account/connections/" .. id)))
    assert.equal(404, (e.call("POST", "/v2/account/connections/conn_x/invalidate")))
  end)

  -- The ofauth client's transport, answered by the app in this VM.
  local function transport(e)
    return function(req)
      local path, q = req.url:match("^https?://[^/]+([^?]*)%??(.*)$")
      local query = {}
      for k, v in q:gmatch("([^&=]+)=([^&]*)") do query[k] = v end
      local status, body, headers = e.app:handle({ method = req.method, path = path, query = query,
        headers = req.headers, body = req.body or "" })
      return { status = status, headers = headers or {}, body = body }
    end
  end

  it("lets the ofauth client retry a 429 and stop at SESSION_EXPIRED", function()
    local log = require("ofauth.log")
    local sink, lines = log.sink, {}
    log.sink = function(line) lines[#lines + 1] = line end
    finally(function() log.sink = sink end)
    local e = new()
    local id = e.connect("u")
    local slept = {}
    local client = assert(require("ofauth.client").new({ api_key = KEY, base_url = "http://127.0.0.1:1",
      http = transport(e), policy = { sleep = function(s) slept[#slept + 1] = s end, jitter = "none" } }))
    e.call("POST", "/emulator/faults", { body = { kind = "rate_limit", count = 1, retry_after = 2 } })
    assert.equal("sandbox", assert(client:whoami()).environment)
    assert.same({ 2 }, slept)
    e.call("POST", "/emulator/connections/" .. id .. "/expire")
    -- A repository to mark the connection in (without one, client.lua indexes
    -- its own connections() method: reported to the lead).
    local marked = {}
    client = assert(require("ofauth.client").new({ api_key = KEY, base_url = "http://127.0.0.1:1",
      http = transport(e), connections = { mark_expired = function(_, cid)
        marked[#marked + 1] = cid
        return { connection_id = cid }, true
      end } }))
    local res, err = client:access(id):self()
    assert.is_nil(res)
    assert.equal("reauth_required", err.kind)
    assert.same({ id }, marked)
    assert.matches("ofauth.session_expired", table.concat(lines, "\n"))
    assert.is_nil(table.concat(lines, "\n"):find(id, 1, true))
    local echo = assert(client:access(e.connect("v")):request("PATCH", "/custom/lists/3", { body = { n = 1 } }))
    assert.same({ echo = true, method = "PATCH", path = "/v2/access/custom/lists/3", query = cjson.null,
      body = { n = 1 } }, echo)
  end)

  it("serves the ofauth client end to end (both list paths)", function()
    local e = new()
    for i = 1, 12 do e.connect("user-" .. i) end
    for _, paths in ipairs({ false, "checklist" }) do
      local client = assert(require("ofauth.client").new({ api_key = KEY, base_url = "http://127.0.0.1:1",
        http = transport(e), paths = paths or nil }))
      local me = assert(client:whoami())
      assert.equal("sandbox", me.environment)
      local n = 0
      for c in client:connections({ limit = 5 }) do
        n = n + 1
        assert.matches("^conn_", c.id)
      end
      assert.equal(12, n)
    end
  end)
end)

describe("emulator Access API", function()
  local function conn(e, opts)
    local id = e.connect("creator", opts)
    return id, { ["x-connection-id"] = id }
  end

  it("answers /v2/access/self for the connection", function()
    local e = new()
    local _, h = conn(e)
    local status, me = e.call("GET", "/v2/access/self", { headers = h })
    assert.equal(200, status)
    assert.equal("creator_1", me.username)
    assert.equal(1000, me.subscribersCount)
  end)

  it("pages 100,000 generated subscribers without holding them", function()
    local e = new({ subscribers = 100000 })
    local _, h = conn(e)
    local _, first = e.call("GET", "/v2/access/subscribers", { headers = h, query = { limit = "3" } })
    assert.same({ 1, 2, 3 }, { first.list[1].id % 10000000, first.list[2].id % 10000000,
      first.list[3].id % 10000000 })
    assert.is_true(first.hasMore)
    assert.equal(3, first.nextOffset)
    local _, last = e.call("GET", "/v2/access/subscribers", { headers = h,
      query = { limit = "100", offset = "99990" } })
    assert.equal(10, #last.list)
    assert.is_false(last.hasMore)
    assert.is_nil(last.nextOffset)
    assert.equal("fan_100000", last.list[10].username)
    local _, latest = e.call("GET", "/v2/access/subscribers", { headers = h,
      query = { type = "latest", limit = "2" } })
    assert.equal("fan_100000", latest.list[1].username)
    assert.equal("fan_99999", latest.list[2].username)
  end)

  it("filters active and expired subscribers consistently across pages", function()
    local e = new({ subscribers = 1000 })
    local _, h = conn(e)
    for kind, want in pairs({ active = 750, expired = 250, all = 1000 }) do
      local n, offset, seen = 0, 0, {}
      repeat
        local _, b = e.call("GET", "/v2/access/subscribers", { headers = h,
          query = { type = kind, limit = "100", offset = tostring(offset) } })
        for _, s in ipairs(b.list) do
          n = n + 1
          assert.is_nil(seen[s.id])
          seen[s.id] = true
          if kind ~= "all" then assert.equal(kind, s.status) end
        end
        offset = b.nextOffset
      until not b.hasMore
      assert.equal(want, n)
      assert.equal(want, subscribers.count(1000, kind))
    end
    assert.equal(400, (e.call("GET", "/v2/access/subscribers", { headers = h, query = { type = "vip" } })))
  end)

  it("echoes any /v2/access path outside the catalogue for the generic request()", function()
    local e = new()
    local _, h = conn(e)
    local status, b, _, raw = e.call("POST", "/v2/access/custom/12/messages", { headers = h,
      query = { dry = "1" }, body = { text = "hi" } })
    assert.equal(200, status)
    assert.same({ echo = true, method = "POST", path = "/v2/access/custom/12/messages",
      query = { dry = "1" }, body = { text = "hi" } }, b)
    assert.is_nil(raw:find(h["x-connection-id"], 1, true))
    assert.is_nil(raw:find(KEY, 1, true))
  end)

  it("needs x-connection-id, 404s an unknown one, SESSION_EXPIRED for an expired one", function()
    local e = new()
    local id, h = conn(e)
    local status, b = e.call("GET", "/v2/access/self")
    assert.equal(400, status)
    assert.equal("x-connection-id", b.details.header)
    assert.equal(404, (e.call("GET", "/v2/access/self", { headers = { ["x-connection-id"] = "conn_zz" } })))
    assert.equal(200, (e.call("POST", "/emulator/connections/" .. id .. "/expire")))
    status, b = e.call("GET", "/v2/access/posts", { headers = h })
    assert.equal(401, status)
    assert.equal("SESSION_EXPIRED", b.code)
    local c = new({ error_shape = "checklist", session_expired_status = 403 })
    local _, h2 = conn(c)
    c.call("POST", "/v2/account/connections/" .. h2["x-connection-id"] .. "/invalidate")
    status, b = c.call("GET", "/v2/access/subscribers", { headers = h2 })
    assert.equal(403, status)
    assert.equal("SESSION_EXPIRED", b.type)
  end)
end)

describe("emulator fault injection", function()
  it("answers 429 with Retry-After for the next N calls", function()
    local e = new()
    local status, b = e.call("POST", "/emulator/faults", { body = { kind = "rate_limit", count = 2,
      retry_after = 3 } })
    assert.equal(201, status)
    assert.equal(1, #b.list)
    for _ = 1, 2 do
      local s, body, h = e.call("GET", "/v2/account/whoami")
      assert.equal(429, s)
      assert.equal("RATE_LIMIT_EXCEEDED", body.code)
      assert.equal("3", h["retry-after"])
    end
    assert.equal(200, (e.call("GET", "/v2/account/whoami")))
  end)

  it("answers 5xx, and only under path_prefix", function()
    local e = new()
    e.call("POST", "/emulator/faults", { body = { kind = "server_error", status = 502,
      path_prefix = "/v2/account/connections" } })
    assert.equal(200, (e.call("GET", "/v2/account/whoami")))
    local s, b = e.call("GET", "/v2/account/connections")
    assert.equal(502, s)
    assert.equal("INTERNAL_SERVER_ERROR", b.code)
    assert.equal(200, (e.call("GET", "/v2/account/connections")))
  end)

  it("delays a slow answer by delay_ms", function()
    local e = new()
    e.call("POST", "/emulator/faults", { body = { kind = "slow", delay_ms = 1500 } })
    assert.equal(200, (e.call("GET", "/v2/account/whoami")))
    assert.equal(1.5, e.clock.slept)
  end)

  it("drops the connection when the server can, refuses the rule otherwise", function()
    local e = new()
    local s, b = e.call("POST", "/emulator/faults", { body = { kind = "drop" } })
    assert.equal(400, s)
    assert.matches("drop", b.error)
    local d = new(nil, { can_drop = true })
    assert.equal(201, (d.call("POST", "/emulator/faults", { body = { kind = "drop" } })))
    assert.equal(app_mod.DROP, (d.call("GET", "/v2/account/whoami")))
    assert.equal(200, (d.call("GET", "/v2/account/whoami")))
  end)

  it("answers SESSION_EXPIRED for one connection's Access calls only", function()
    local e = new()
    local a, b = e.connect("a"), e.connect("b")
    e.call("POST", "/emulator/faults", { body = { kind = "session_expired", connection_id = a, count = 1 } })
    assert.equal(200, (e.call("GET", "/v2/account/connections")))
    assert.equal(200, (e.call("GET", "/v2/access/self", { headers = { ["x-connection-id"] = b } })))
    local s, body = e.call("GET", "/v2/access/self", { headers = { ["x-connection-id"] = a } })
    assert.equal(401, s)
    assert.equal("SESSION_EXPIRED", body.code)
    assert.equal(200, (e.call("GET", "/v2/access/self", { headers = { ["x-connection-id"] = a } })))
  end)

  it("lists and clears rules, validates them, never faults the control API", function()
    local e = new()
    e.call("POST", "/emulator/faults", { body = { faults = {
      { kind = "rate_limit", count = 5 }, { kind = "server_error" } } } })
    local _, l = e.call("GET", "/emulator/faults")
    assert.equal(2, #l.list)
    assert.equal(200, (e.call("GET", "/emulator/state")))
    local _, c = e.call("DELETE", "/emulator/faults")
    assert.equal(2, c.cleared)
    assert.equal(200, (e.call("GET", "/v2/account/whoami")))
    assert.equal(400, (e.call("POST", "/emulator/faults", { body = { kind = "meteor" } })))
    assert.equal(400, (e.call("POST", "/emulator/faults",
      { body = { kind = "server_error", status = 404 } })))
    assert.equal(400, (e.call("POST", "/emulator/faults", { body = { kind = "slow", delay_ms = 10 ^ 9 } })))
  end)

  it("takes initial rules from the configuration (CLI form)", function()
    local spec = assert(faults.parse_spec("rate_limit,count=2,retry_after=7"))
    assert.same({ kind = "rate_limit", count = 2, retry_after = 7 }, spec)
    local e = new({ faults = { spec } })
    local _, _, h = e.call("GET", "/v2/account/whoami")
    assert.equal("7", h["retry-after"])
    assert.is_nil(emulator.new_local({ faults = { { kind = "nope" } } }))
  end)
end)

describe("emulator webhook delivery", function()
  local URL = "http://127.0.0.1:9/webhooks"

  it("sends {eventType, live, data} with svix headers", function()
    local e = new({ webhook_url = URL, webhook_secret = "whsec_c2VjcmV0" })
    local id = e.connect("user-1")
    assert.equal(1, (e.loop:step()))
    local req = e.rcv.requests[1]
    assert.equal("POST", req.method)
    assert.equal(URL, req.url)
    assert.equal("application/json", req.headers["content-type"])
    assert.matches("^msg_", req.headers["svix-id"])
    assert.equal(tostring(e.clock.t), req.headers["svix-timestamp"])
    local ev = cjson.decode(req.body)
    assert.equal("connection.created", ev.eventType)
    assert.is_false(ev.live)
    assert.equal("user-1", ev.data.clientReferenceId)
    assert.equal(id, ev.data.connection.id)
    assert.equal("active", ev.data.connection.status)
    assert.is_string(ev.data.connection.platformUserId)
    assert.is_string(ev.data.connection.userData.userId)
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal("delivered", d.list[1].state)
    assert.equal(200, d.list[1].attempts[1].status)
  end)

  it("sends {type, data} with the checklist header in checklist mode", function()
    local e = new({ webhook_url = URL, webhook_secret = "raw-secret", signing = "checklist" })
    e.connect("u", { key = LIVE_KEY })
    e.loop:step()
    local req = e.rcv.requests[1]
    assert.equal(("t=%d,v1=fake-raw-secret"):format(e.clock.t), req.headers["ofauth-signature"])
    assert.is_nil(req.headers["svix-id"])
    local ev = cjson.decode(req.body)
    assert.equal("connection.created", ev.type)
    assert.is_nil(ev.eventType)
  end)

  it("retries with exponential backoff and records every attempt", function()
    local e = new({ webhook_url = URL, webhook_secret = "whsec_c2VjcmV0", webhook_base_delay = 2 },
      { statuses = { 500, { kind = "timeout", message = "t" }, 200 } })
    e.connect("u")
    local t0 = e.clock.t
    assert.equal(1, (e.loop:step()))
    local made, wait = e.loop:step()
    assert.equal(0, made)
    assert.equal(2, wait)
    e.clock.t = t0 + 2
    assert.equal(1, (e.loop:step()))
    e.clock.t = t0 + 5.9
    assert.equal(0, (e.loop:step()))
    e.clock.t = t0 + 6
    assert.equal(1, (e.loop:step()))
    local _, d = e.call("GET", "/emulator/deliveries")
    local r = d.list[1]
    assert.equal("delivered", r.state)
    assert.equal(3, #r.attempts)
    assert.equal(500, r.attempts[1].status)
    assert.equal("timeout", r.attempts[2].error)
    assert.equal(200, r.attempts[3].status)
    -- the same message id on every attempt, a fresh timestamp
    local h1, h3 = e.rcv.requests[1].headers, e.rcv.requests[3].headers
    assert.equal(h1["svix-id"], h3["svix-id"])
    assert.equal(tostring(t0 + 6), h3["svix-timestamp"])
  end)

  it("gives up after webhook_attempts and moves on", function()
    local e = new({ webhook_url = URL, webhook_secret = "whsec_c2VjcmV0", webhook_attempts = 2,
      webhook_base_delay = 0 }, { statuses = { 503, 503 } })
    e.connect("u")
    e.loop:step()
    e.loop:step()
    assert.equal(0, e.loop:backlog())
    local _, d = e.call("GET", "/emulator/deliveries", { query = { state = "failed" } })
    assert.equal(1, #d.list)
    assert.equal(2, #d.list[1].attempts)
  end)

  it("keeps events of one connection in order while another connection's go out", function()
    local e = new({ webhook_url = URL, webhook_secret = "whsec_c2VjcmV0", webhook_base_delay = 10 },
      { statuses = { 500 } })
    local a = e.connect("a")
    e.call("POST", "/v2/account/connections/" .. a .. "/invalidate")
    local b = e.connect("b")
    e.loop:step() -- a/created fails; a/expired waits; b/created goes out
    assert.equal(2, #e.rcv.requests)
    assert.equal(b, cjson.decode(e.rcv.requests[2].body).data.connection.id)
    e.clock.t = e.clock.t + 10
    e.loop:step()
    local order = {}
    for i, req in ipairs(e.rcv.requests) do order[i] = cjson.decode(req.body).eventType end
    assert.same({ "connection.created", "connection.created", "connection.created", "connection.expired" },
      order)
  end)

  it("delivers to a URL set after start (PUT /emulator/webhook)", function()
    local e = new({ webhook_secret = "whsec_c2VjcmV0" })
    assert.equal(400, (e.call("PUT", "/emulator/webhook", { body = { url = "ftp://x" } })))
    local status, b = e.call("PUT", "/emulator/webhook", { body = { url = "http://127.0.0.1:7/later?t=s" } })
    assert.equal(200, status)
    assert.equal("http://127.0.0.1:7", b.webhook)
    e.connect("u")
    e.loop:step()
    assert.equal("http://127.0.0.1:7/later?t=s", e.rcv.requests[1].url)
    assert.equal("v1,fake", e.rcv.requests[1].headers["svix-signature"])
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal(200, d.list[1].status)
    local none = new()
    assert.equal(409, (none.call("PUT", "/emulator/webhook", { body = { url = "http://127.0.0.1:7/" } })))
  end)

  it("records events as skipped without a webhook URL", function()
    local e = new()
    e.connect("u")
    e.loop:step()
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal("skipped", d.list[1].state)
    assert.equal(0, #e.rcv.requests)
  end)

  it("sends rules.updated and arbitrary events from the control API", function()
    local e = new({ webhook_url = URL, webhook_secret = "whsec_c2VjcmV0" })
    local status, b = e.call("POST", "/emulator/rules", { body = { rules = { static = { "x" } } } })
    assert.equal(200, status)
    assert.equal(1, b.revision)
    local id = e.connect("u")
    assert.equal(202, (e.call("POST", "/emulator/webhooks/send", { body = { type = "custom.thing",
      data = { a = 1 } } })))
    assert.equal(202, (e.call("POST", "/emulator/webhooks/send", { body = { type = "connection.updated",
      connection_id = id } })))
    assert.equal(400, (e.call("POST", "/emulator/webhooks/send", { body = { data = {} } })))
    e.loop:step()
    local evs = {}
    for i, req in ipairs(e.rcv.requests) do evs[i] = cjson.decode(req.body) end
    assert.equal("rules.updated", evs[1].eventType)
    assert.same({ rules = { static = { "x" } }, revision = 1 }, evs[1].data)
    assert.equal("custom.thing", evs[3].eventType)
    assert.same({ a = 1 }, evs[3].data)
    assert.equal(id, evs[4].data.connection.id)
  end)

  it("keeps at most max_delivery_records records", function()
    local e = new({ max_delivery_records = 3 })
    for i = 1, 5 do e.call("POST", "/emulator/webhooks/send", { body = { type = "t.e" .. i } }) end
    e.loop:step()
    local _, d = e.call("GET", "/emulator/deliveries")
    assert.equal(3, #d.list)
    assert.equal("t.e5", d.list[3].type)
  end)

  it("refuses new events with 503 when the queue is full", function()
    local e = new({ max_queue = 1 })
    assert.equal(202, (e.call("POST", "/emulator/webhooks/send", { body = { type = "a.b" } })))
    assert.equal(503, (e.call("POST", "/emulator/webhooks/send", { body = { type = "a.b" } })))
    e.loop:step()
    assert.equal(202, (e.call("POST", "/emulator/webhooks/send", { body = { type = "a.b" } })))
  end)
end)

describe("emulator state", function()
  it("persists connections and sessions atomically with mode 0600", function()
    local path = os.tmpname()
    os.remove(path)
    local e = new({ state = path })
    local id = e.connect("keep-me")
    local init = e.link({ ref = "pending-user" })
    assert.equal("600", ("%o"):format(require("oflua.core").file_mode(path) & 511))
    assert.is_nil(io.open(path .. ".tmp"))
    local again = new({ state = path })
    local _, c = again.call("GET", "/v2/account/connections/" .. id)
    assert.equal("keep-me", c.clientReferenceId)
    local _, s = again.call("GET", "/v2/link/" .. init.clientSecret)
    assert.equal("initialized", s.status)
    again.connect("next")
    local _, l = again.call("GET", "/v2/connections")
    assert.equal(2, #l.list)
    assert.equal("creator_2", l.list[2].userData.username)
    helper.write_file(path, "garbage")
    local none, err = emulator.new_local({ state = path })
    assert.is_nil(none)
    assert.matches("state file", err)
    os.remove(path)
  end)

  it("shows a debug state without secrets", function()
    local e = new({ webhook_url = "http://127.0.0.1:9/hook?token=abc", webhook_secret = "whsec_c2VjcmV0" })
    local id = e.connect("u")
    local init = e.link()
    local _, _, _, raw = e.call("GET", "/emulator/state")
    for _, secret in ipairs({ KEY, LIVE_KEY, "whsec_c2VjcmV0", id, init.clientSecret, "token=abc" }) do
      assert.is_nil(raw:find(secret, 1, true), secret)
    end
    local st = cjson.decode(raw)
    assert.equal(1, st.connection_counts.active)
    assert.equal(2, st.config.api_keys)
  end)

  it("logs requests without keys, connection ids or Link secrets", function()
    local e = new({ webhook_url = "http://127.0.0.1:9/hook", webhook_secret = "whsec_c2VjcmV0" })
    local id = e.connect("u")
    local init = e.link()
    e.call("GET", "/v2/link/" .. init.clientSecret)
    e.call("GET", "/v2/account/connections/" .. id)
    e.call("GET", "/v2/access/self", { headers = { ["x-connection-id"] = id } })
    e.loop:step()
    local all = table.concat(e.logs, "\n")
    assert.matches("GET /v2/account/connections/conn_%*%*%* %-> 200", all)
    assert.matches("webhook connection.created", all)
    for _, secret in ipairs({ KEY, id, init.clientSecret, "whsec_c2VjcmV0" }) do
      assert.is_nil(all:find(secret, 1, true), secret)
    end
  end)
end)

describe("emulator input limits", function()
  it("refuses JSON nested deeper than the limit with a 400", function()
    local e = new()
    local deep = ("["):rep(100) .. ("]"):rep(100)
    local status, b = e.call("POST", "/v2/link/init", { body = deep })
    assert.equal(400, status)
    assert.equal("VALIDATION_ERROR", b.code)
  end)

  it("refuses an over-long clientReferenceId", function()
    local e = new()
    local status = e.call("POST", "/v2/link/init", { body = { redirectUrl = REDIRECT,
      clientReferenceId = ("x"):rep(app_mod.MAX_REFERENCE_LEN + 1) } })
    assert.equal(400, status)
  end)

  it("caps the number of connections and fault rules", function()
    local e = new({ max_connections = 2, max_faults = 1 })
    e.connect("a")
    e.connect("b")
    local _, s = e.link({ ref = "c" })
    local status, b = e.call("POST", "/emulator/link/" .. s .. "/complete", { body = {} })
    assert.equal(409, status)
    assert.matches("too many connections", b.error)
    assert.equal(201, (e.call("POST", "/emulator/faults", { body = { kind = "slow", delay_ms = 0 } })))
    assert.equal(400, (e.call("POST", "/emulator/faults", { body = { kind = "slow", delay_ms = 0 } })))
  end)

  it("forgets the oldest finished Link session past max_sessions", function()
    local e = new({ max_sessions = 2 })
    local first, s1 = e.link({ ref = "a" })
    e.call("POST", "/emulator/link/" .. s1 .. "/complete", { body = { outcome = "cancelled" } })
    local second = e.link({ ref = "b" })
    e.link({ ref = "c" })
    assert.equal(404, (e.call("GET", "/v2/link/" .. first.clientSecret)))
    assert.equal(200, (e.call("GET", "/v2/link/" .. second.clientSecret)))
  end)
end)

describe("emulator log redaction", function()
  it("masks ids and Link secrets in paths", function()
    assert.equal("/v2/link/init", app_mod.redact_path("/v2/link/init"))
    assert.equal("/v2/link/***", app_mod.redact_path("/v2/link/lcs_abcdef"))
    assert.equal("/v2/account/connections/conn_***/invalidate",
      app_mod.redact_path("/v2/account/connections/conn_123/invalidate"))
    assert.equal("/emulator/link/***/complete", app_mod.redact_path("/emulator/link/ls_99/complete"))
    assert.equal("/link/ls_***", app_mod.redact_path("/link/ls_99"))
  end)
end)

describe("emulator delivery records", function()
  it("come back with integer numbers", function()
    local e = new({ webhook_url = "http://127.0.0.1:9/h", webhook_secret = "whsec_c2VjcmV0" })
    e.connect("u")
    e.loop:step()
    local r = require("ofauth.emulator.delivery").records(e.dict)[1]
    assert.equal("integer", math.type(r.n))
    assert.equal("integer", math.type(r.status))
    assert.equal("integer", math.type(r.attempts[1].attempt))
  end)
end)
