-- The OFAuth emulator over real sockets: oflua.server serves it, oflua.http
-- and the ofauth client call it, a receiver started with oflua.server takes
-- its webhooks, ofauth.webhooks.verify checks the signatures.
local cjson = require("cjson")
local helper = require("spec.helper")
local server = require("oflua.server")
local http = require("oflua.http")
local crypto = require("oflua.crypto")

local KEY, LIVE_KEY = "sk_test_e2e_key", "sk_live_e2e_key"
local SVIX_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
local RAW_SECRET = "checklist-secret-e2e"

local ready = server.listen and http.request and crypto.hmac
local describe_e2e = ready and describe or function(name)
  describe(name, function()
    pending("needs oflua.server, oflua.http and oflua.crypto on this branch")
  end)
end

-- A webhook receiver: answers 500 to the first `fail` requests, then 200,
-- and keeps every request (body and headers) in a shared dict.
local RECEIVER = [[
local args = ...
local server = require("oflua.server")
local cjson = require("cjson")
local d = server.shared(args.shared)
return function(req)
  local n = d:incr("n", 1, 0)
  d:set("body:" .. n, req.body)
  d:set("headers:" .. n, cjson.encode(req.headers))
  if n <= args.fail then return 500, "not yet", { ["content-type"] = "text/plain" } end
  return 200, "ok", { ["content-type"] = "text/plain" }
end
]]

local receivers = 0
local function start_receiver(fail)
  receivers = receivers + 1
  local script = helper.write_file(os.tmpname(), RECEIVER)
  local name = ("emulator-e2e-receiver-%d-%s"):format(receivers, crypto.hex(crypto.random(4)))
  local srv = assert(server.listen({ host = "127.0.0.1", port = 0, workers = 1, script = script,
    args = { shared = name, fail = fail or 0 } }))
  local d = server.shared(name)
  local r = { srv = srv, url = srv:url() .. "/webhooks", script = script }
  function r.count() return d:get("n") or 0 end
  function r.request(i)
    return d:get("body:" .. i), cjson.decode(d:get("headers:" .. i))
  end
  function r.stop()
    srv:stop()
    srv:close()
    os.remove(script)
  end
  return r
end

-- HMAC-SHA256 of `data` by the openssl command: base64 (b64) or hex.
local function openssl_hmac(data, macopt, b64)
  local f = helper.write_file(os.tmpname(), data)
  -- (in a subshell: helper.sh redirects the whole line's stdin)
  local out, err, code = helper.sh(("(openssl dgst -sha256 -mac HMAC -macopt %s %s %s%s)"):format(
    helper.shq(macopt), b64 and "-binary" or "-hex", helper.shq(f), b64 and " | base64 -w0" or ""))
  os.remove(f)
  assert(code == 0, err)
  return b64 and out or out:match("(%x+)%s*$")
end

local function call(emu, method, path, o)
  o = o or {}
  local headers = o.headers or {}
  if o.key ~= false then headers.apikey = headers.apikey or o.key or KEY end
  local body = o.body
  if type(body) == "table" then
    body = cjson.encode(body)
    headers["content-type"] = "application/json"
  end
  local res, err = http.request({ method = method, url = emu:url() .. path, headers = headers, body = body,
    timeout_ms = o.timeout_ms or 10000 })
  if not res then return nil, err end
  local ok, decoded = pcall(cjson.decode, res.body)
  return res.status, ok and decoded or nil, res.headers, res.body
end

local function connect(emu, ref)
  local status, init = call(emu, "POST", "/v2/link/init", { body = {
    redirectUrl = "http://127.0.0.1:3000/cb", clientReferenceId = ref } })
  assert.equal(200, status)
  local session = init.url:match("/link/([^/?]+)$")
  local s, b = call(emu, "POST", "/emulator/link/" .. session .. "/complete", { key = false,
    body = { outcome = "success" } })
  assert.equal(200, s)
  return b.connectionId, b, init
end

describe_e2e("emulator over HTTP", function()
  local emulator = require("ofauth.emulator")
  local webhooks = require("ofauth.webhooks")

  it("answers whoami, Link, connections and the Access API", function()
    local emu = assert(emulator.start({ api_keys = { KEY, LIVE_KEY }, subscribers = 100000 }))
    finally(function() emu:stop() end)
    assert.matches("^http://127%.0%.0%.1:%d+$", emu:url())
    assert.equal(tonumber(emu:url():match(":(%d+)$")), emu:port())
    local status, b = call(emu, "GET", "/v2/account/whoami", { key = false })
    assert.equal(401, status)
    assert.equal("UNAUTHORIZED", b.code)
    status, b = call(emu, "GET", "/v2/account/whoami", { key = false, headers = { ApiKey = LIVE_KEY } })
    assert.equal(200, status)
    assert.equal("production", b.environment)

    local id, done, init = connect(emu, "user-e2e")
    assert.matches("^" .. emu:url():gsub("%p", "%%%0") .. "/link/", init.url)
    assert.matches("status=success", done.redirectUrl)
    local page = assert(http.request({ url = init.url }))
    assert.equal(410, page.status) -- completed: the hosted page is closed

    local client = assert(require("ofauth.client").new({ api_key = KEY, base_url = emu:url() }))
    local n = 0
    for c in client:connections({ limit = 1 }) do
      n = n + 1
      assert.equal(id, c.id)
    end
    assert.equal(1, n)
    local me = assert(client:access(id):self())
    assert.equal("creator_1", me.username)
    local got = 0
    for _ in client:access(id):subscribers({ limit = 100, offset = 99750 }) do got = got + 1 end
    assert.equal(250, got)
  end)

  it("serves the hosted Link page to a browser-like client", function()
    local emu = assert(emulator.start({ api_keys = { KEY } }))
    finally(function() emu:stop() end)
    local _, init = call(emu, "POST", "/v2/link/init", { body = {
      redirectUrl = "http://localhost:5000/back", clientReferenceId = "browser" } })
    local page = assert(http.request({ url = init.url }))
    assert.equal(200, page.status)
    assert.matches("<form", page.body)
    local res = assert(http.request({ method = "POST", url = init.url, body = "outcome=success",
      headers = { ["content-type"] = "application/x-www-form-urlencoded" } }))
    assert.equal(303, res.status)
    assert.matches("^http://localhost:5000/back%?status=success&connection_id=conn_", res.headers.location)
  end)

  for _, scheme in ipairs({ "svix", "checklist" }) do
    it("delivers " .. scheme .. "-signed webhooks that ofauth.webhooks.verify accepts, with retries", function()
      local rcv = start_receiver(2)
      local secret = scheme == "svix" and SVIX_SECRET or RAW_SECRET
      local emu = assert(emulator.start({ api_keys = { KEY }, webhook_url = rcv.url, webhook_secret = secret,
        signing = scheme, webhook_base_delay = 0.05, webhook_attempts = 4 }))
      finally(function() emu:stop(); rcv.stop() end)
      local id = connect(emu, "hook-user")
      assert.equal(200, (call(emu, "POST", "/v2/account/connections/" .. id .. "/invalidate")))
      assert.is_true(emu:deliver_pending(20))
      assert.equal(4, rcv.count()) -- created: 500, 500, 200; then expired: 200
      local types = {}
      for i = 1, 4 do
        local body, headers = rcv.request(i)
        local event, meta = webhooks.verify(body, headers, secret)
        assert.is_table(event, meta)
        assert.equal(scheme, meta.scheme)
        types[i] = event.type
        assert.equal(id, event.data.connection.id)
        local raw = cjson.decode(body)
        if scheme == "svix" then
          assert.equal(event.type, raw.eventType)
          assert.is_false(raw.live)
        else
          assert.equal(event.type, raw.type)
        end
      end
      assert.same({ "connection.created", "connection.created", "connection.created", "connection.expired" },
        types)
      local _, d = call(emu, "GET", "/emulator/deliveries", { key = false })
      assert.equal(2, #d.list)
      assert.equal("delivered", d.list[1].state)
      assert.same({ 500, 500, 200 }, { d.list[1].attempts[1].status, d.list[1].attempts[2].status,
        d.list[1].attempts[3].status })
      assert.equal(1, #d.list[2].attempts)
      -- the signature matches one computed independently with openssl
      local body, headers = rcv.request(4)
      if scheme == "svix" then
        local signed = headers["svix-id"] .. "." .. headers["svix-timestamp"] .. "." .. body
        local key = crypto.hex(crypto.unbase64(SVIX_SECRET:sub(7)))
        assert.equal(headers["svix-signature"], "v1," .. openssl_hmac(signed, "hexkey:" .. key, true))
      else
        local t = headers["ofauth-signature"]:match("^t=(%d+),v1=")
        assert.equal(headers["ofauth-signature"], ("t=%s,v1=%s"):format(t,
          openssl_hmac(t .. "." .. body, "key:" .. RAW_SECRET, false)))
      end
      -- a wrong secret does not verify
      assert.is_nil((webhooks.verify(body, headers, scheme == "svix" and "whsec_d3Jvbmc=" or "wrong")))
    end)
  end

  it("delivers from the server's tick VM with delivery = background", function()
    local rcv = start_receiver(1)
    local emu = assert(emulator.start({ api_keys = { KEY }, webhook_url = rcv.url, webhook_secret = SVIX_SECRET,
      webhook_base_delay = 0.05, delivery = "background", poll_interval = 0.02 }))
    finally(function() emu:stop(); rcv.stop() end)
    assert.equal(0, (emu:step())) -- nothing to drive
    local id = connect(emu, "bg-user")
    assert.is_true(emu:deliver_pending(20)) -- waits for the tick VM
    assert.equal(2, rcv.count())
    local body, headers = rcv.request(2)
    local event = assert(webhooks.verify(body, headers, SVIX_SECRET))
    assert.equal(id, event.data.connection.id)
    local d = emu:deliveries()
    assert.equal("delivered", d[1].state)
    assert.equal(2, #d[1].attempts)
  end)

  it("delivers to a webhook URL set after start", function()
    local rcv = start_receiver(0)
    local emu = assert(emulator.start({ api_keys = { KEY }, webhook_secret = SVIX_SECRET }))
    finally(function() emu:stop(); rcv.stop() end)
    assert.is_nil((emu:set_webhook_url("not a url")))
    assert.is_true(emu:set_webhook_url(rcv.url))
    connect(emu, "late-url")
    assert.is_true(emu:deliver_pending(20))
    assert.equal(1, rcv.count())
    assert.is_table((webhooks.verify(rcv.request(1), select(2, rcv.request(1)), SVIX_SECRET)))
    assert.equal(200, emu:deliveries()[1].status)
  end)

  it("records a failed delivery when the receiver is down", function()
    local emu = assert(emulator.start({ api_keys = { KEY }, webhook_url = "http://127.0.0.1:1/none",
      webhook_secret = SVIX_SECRET, webhook_base_delay = 0.01, webhook_attempts = 2,
      webhook_timeout_ms = 2000 }))
    finally(function() emu:stop() end)
    assert.equal(202, (call(emu, "POST", "/emulator/webhooks/send", { key = false,
      body = { type = "rules.updated", data = { rules = {}, revision = 9 } } })))
    assert.is_true(emu:deliver_pending(20))
    local d = emu:deliveries()
    assert.equal("failed", d[1].state)
    assert.equal("connect", d[1].attempts[1].error)
  end)

  it("injects 429, 5xx and slow answers over HTTP", function()
    local emu = assert(emulator.start({ api_keys = { KEY } }))
    finally(function() emu:stop() end)
    call(emu, "POST", "/emulator/faults", { key = false, body = { faults = {
      { kind = "rate_limit", retry_after = 4 }, { kind = "server_error", status = 504 },
      { kind = "slow", delay_ms = 50 } } } })
    local status, b, h = call(emu, "GET", "/v2/account/whoami")
    assert.equal(429, status)
    assert.equal("RATE_LIMIT_EXCEEDED", b.code)
    assert.equal("4", h["retry-after"])
    assert.equal(504, (call(emu, "GET", "/v2/account/whoami")))
    assert.equal(200, (call(emu, "GET", "/v2/account/whoami")))
    assert.equal(200, (call(emu, "GET", "/v2/account/whoami")))
  end)

  it("drops the connection for a drop fault when the server supports it", function()
    local emu = assert(emulator.start({ api_keys = { KEY } }))
    finally(function() emu:stop() end)
    -- count = 2: curl retries a request once on a fresh connection when a
    -- reused one is closed before any answer.
    local status = call(emu, "POST", "/emulator/faults", { key = false, body = { kind = "drop", count = 2 } })
    if not server.DROP then
      assert.equal(400, status)
      pending("oflua.server has no DROP marker yet: drop faults are refused")
      return
    end
    assert.equal(201, status)
    local res, err = call(emu, "GET", "/v2/account/whoami", { timeout_ms = 5000 })
    assert.is_nil(res)
    assert.is_table(err)
    call(emu, "DELETE", "/emulator/faults", { key = false })
    assert.equal(200, (call(emu, "GET", "/v2/account/whoami")))
  end)

  it("keeps connections across a restart with a state file", function()
    local path = os.tmpname()
    os.remove(path)
    finally(function() os.remove(path) end)
    local emu = assert(emulator.start({ api_keys = { KEY }, state = path }))
    local id = connect(emu, "durable")
    emu:stop()
    emu = assert(emulator.start({ api_keys = { KEY }, state = path }))
    finally(function() emu:stop() end)
    local status, c = call(emu, "GET", "/v2/account/connections/" .. id)
    assert.equal(200, status)
    assert.equal("durable", c.clientReferenceId)
  end)

  it("stops at the end of a <close> scope, and stop() is idempotent", function()
    local url
    do
      local emu <close> = assert(emulator.start({ api_keys = { KEY } }))
      url = emu:url()
      assert.equal(200, (call(emu, "GET", "/v2/account/whoami")))
    end
    local res, err = http.request({ url = url .. "/emulator/health", timeout_ms = 2000 })
    assert.is_nil(res)
    assert.equal("connect", err.kind)
    local emu = assert(emulator.start({ api_keys = { KEY } }))
    emu:stop()
    emu:stop()
  end)

  it("reports a port already in use", function()
    local emu = assert(emulator.start({ api_keys = { KEY } }))
    finally(function() emu:stop() end)
    local other, err = emulator.start({ api_keys = { KEY }, port = emu:port() })
    assert.is_nil(other)
    assert.is_string(err)
  end)

  it("refuses bad options without starting", function()
    local emu, err = emulator.start({ signing = "nope" })
    assert.is_nil(emu)
    assert.matches("signing", err)
    emu, err = emulator.start({ faults = { { kind = "slow", delay_ms = -1 } } })
    assert.is_nil(emu)
    assert.matches("delay_ms", err)
  end)
end)

describe_e2e("oflua emulator (the command)", function()
  it("serves until SIGTERM and writes its URL to --ready-file", function()
    local ready_file = os.tmpname()
    os.remove(ready_file)
    local errf, pidf = os.tmpname(), os.tmpname()
    finally(function() os.remove(ready_file); os.remove(errf); os.remove(pidf) end)
    -- under `timeout`: the emulator goes away by itself even if this spec dies
    -- (TERM sent to timeout is passed on to it)
    -- the secret from the environment, no --webhook-url: PUT /emulator/webhook works later
    local cmd = "{ OFAUTH_WEBHOOK_SECRET=%s timeout 120 %s emulator --port 0 --api-key %s --ready-file %s"
      .. " >/dev/null 2>%s & echo $! >%s; }"
    helper.sh(cmd:format(helper.shq(require("ofauth.webhooks").new_secret()), helper.shq(helper.bin), KEY,
      helper.shq(ready_file), helper.shq(errf), helper.shq(pidf)))
    local pid = helper.slurp(pidf):match("%d+")
    assert.is_string(pid)
    finally(function() helper.sh("kill " .. pid .. " 2>/dev/null") end)
    local url
    for _ = 1, 200 do
      url = helper.slurp(ready_file):match("^(http://%S+)")
      if url then break end
      require("oflua.core").sleep(0.05)
    end
    if not url then error("the emulator did not start: " .. helper.slurp(errf)) end
    local res = assert(http.request({ url = url .. "/v2/account/whoami", headers = { apikey = KEY } }))
    assert.equal(200, res.status)
    res = assert(http.request({ method = "PUT", url = url .. "/emulator/webhook",
      body = '{"url":"http://127.0.0.1:7/later"}', headers = { ["content-type"] = "application/json" } }))
    assert.equal(200, res.status)
    local _, _, code = helper.sh("kill -TERM " .. pid)
    assert.equal(0, code)
    for _ = 1, 200 do
      local _, _, alive = helper.sh("kill -0 " .. pid)
      if alive ~= 0 then break end
      require("oflua.core").sleep(0.05)
    end
    local log = helper.slurp(errf)
    assert.matches("listening on http://127%.0%.0%.1:%d+", log)
    assert.matches("GET /v2/account/whoami %-> 200", log)
    assert.matches("stopped", log)
    assert.is_nil(log:find(KEY, 1, true))
  end)
end)

describe("oflua emulator --help and bad flags", function()
  it("prints its usage", function()
    local out, _, code = helper.oflua({ "emulator", "--help" })
    assert.equal(0, code)
    assert.matches("usage: oflua emulator", out)
    assert.matches("%-%-webhook%-url", out)
    assert.matches("%-%-signing svix|checklist", out)
  end)

  it("fails with one line on an unknown flag or a bad value", function()
    -- usage errors (oflua.cliutil): exit status 2 and a pointer to --help
    local out, err, code = helper.oflua({ "emulator", "--bogus" })
    local _
    assert.equal(2, code)
    assert.equal("", out)
    assert.equal("oflua emulator: unknown option '--bogus'\nRun 'oflua emulator --help' for usage.\n", err)
    _, err, code = helper.oflua({ "emulator", "--signing", "md5" })
    assert.equal(2, code)
    assert.matches("signing must be one of: svix, checklist", err)
    _, err, code = helper.oflua({ "emulator", "--port", "http" })
    assert.equal(2, code)
    assert.matches("needs a number", err)
    _, err, code = helper.oflua({ "emulator", "--webhook-url", "http://127.0.0.1:9/h",
      "--webhook-secret", "not-a-whsec" })
    assert.equal(1, code)
    assert.matches("whsec_", err)
    assert.is_nil(err:find("not-a-whsec", 1, true))
    _, err, code = helper.oflua({ "emulator", "--fault", "meteor" })
    assert.equal(1, code)
    assert.matches("kind must be one of", err)
    assert.is_nil(err:find("traceback"))
  end)
end)
