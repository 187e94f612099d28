local fakes = require("spec.support.fakes")
local cjson = require("cjson")
local client_mod = require("ofauth.client")
local metrics = require("ofauth.metrics")

local KEY = "sk_test_clientspec_0123456789"

local function make(script, opts)
  local http = fakes.http(script)
  local clock = fakes.clock()
  opts = opts or {}
  local pol = { sleep = clock.sleep, now = clock.now, random = function() return 1 end,
    base_delay = 1, max_delay = 10, max_total_delay = 30, max_attempts = 4 }
  for k, v in pairs(opts.policy or {}) do pol[k] = v end
  local c = assert(client_mod.new({ api_key = KEY, base_url = "http://127.0.0.1:9/", http = http,
    policy = pol, connections = opts.connections, paths = opts.paths }))
  return c, http, clock
end

local function json(status, tbl, headers)
  return { status = status, body = cjson.encode(tbl), headers = headers }
end

describe("ofauth.client", function()
  before_each(function() metrics.init() end)

  it("refuses to start without an API key, before any request", function()
    local saved = os.getenv("OFAUTH_API_KEY")
    assert.is_nil(saved ~= "" and saved or nil)
    local c, err = client_mod.new({})
    assert.is_nil(c)
    assert.equal("invalid", err.kind)
    assert.matches("OFAUTH_API_KEY", err.message)
  end)

  it("sends the key, a user agent and JSON headers; never puts the key in the URL", function()
    local c, http = make({ json(200, { id = "acc_1", name = "Acme", permissions = {} }) })
    local me = assert(c:whoami())
    assert.equal("Acme", me.name)
    local req = http.requests[1]
    assert.equal("GET", req.method)
    assert.equal("http://127.0.0.1:9/v2/account/whoami", req.url)
    assert.equal(KEY, req.headers.apikey)
    assert.matches("^oflua/", req.headers["user-agent"])
    assert.is_nil(req.headers["content-type"])
    assert.not_matches(KEY, req.url, 1, true)
    assert.not_matches(KEY, tostring(c), 1, true)
  end)

  it("maps link_init options to the API's camelCase", function()
    local c, http = make({ json(200, { url = "https://l/1", expiresAt = "2026-01-01T00:00:00Z" }) })
    local r = assert(c:link_init{ redirect_url = "https://app/cb", client_reference_id = "u1",
      connection_id = "conn_abc", client_app_id = "app_1", geolocation = { country = "US" } })
    assert.equal("https://l/1", r.url)
    local req = http.requests[1]
    assert.equal("application/json", req.headers["content-type"])
    assert.same({ redirectUrl = "https://app/cb", clientReferenceId = "u1", connectionId = "conn_abc",
      clientAppId = "app_1", geolocation = { country = "US" } }, cjson.decode(req.body))
  end)

  it("sends x-connection-id on Access API calls, for any method and path", function()
    local c, http = make({ json(200, { username = "creator" }), json(201, { ok = true }),
      json(200, { ok = true }) })
    local acc = c:access("conn_abc123")
    assert.equal("creator", assert(acc:self()).username)
    assert(acc:request("POST", "/posts", { body = { text = "hi" } }))
    assert(acc:request("PATCH", "vault/lists/5", { body = { name = "x" } }))
    assert.equal("conn_abc123", http.requests[1].headers["x-connection-id"])
    assert.equal("http://127.0.0.1:9/v2/access/posts", http.requests[2].url)
    assert.equal("http://127.0.0.1:9/v2/access/vault/lists/5", http.requests[3].url)
    assert.equal("PATCH", http.requests[3].method)
    assert.not_matches("conn_abc123", tostring(acc), 1, true)
  end)

  it("pages through every connection with nextOffset, offset + #list, and hasMore", function()
    local c, http = make({
      json(200, { list = { { id = "conn_1" }, { id = "conn_2" } }, hasMore = true, nextOffset = 2 }),
      json(200, { list = { { id = "conn_3" } }, hasMore = true }),
      json(200, { list = { { id = "conn_4" } }, hasMore = false }),
    })
    local ids = {}
    for conn in c:connections({ limit = 2 }) do ids[#ids + 1] = conn.id end
    assert.same({ "conn_1", "conn_2", "conn_3", "conn_4" }, ids)
    assert.equal("http://127.0.0.1:9/v2/account/connections?limit=2&offset=0", http.requests[1].url)
    assert.equal("http://127.0.0.1:9/v2/account/connections?limit=2&offset=2", http.requests[2].url)
    assert.equal("http://127.0.0.1:9/v2/account/connections?limit=2&offset=3", http.requests[3].url)
  end)

  it("stops on an empty page even when hasMore says true", function()
    local c, http = make({ json(200, { list = {}, hasMore = true }) })
    local n = 0
    for _ in c:connections() do n = n + 1 end
    assert.equal(0, n)
    assert.equal(1, #http.requests)
  end)

  it("uses the checklist's /v2/connections path when asked", function()
    local c, http = make({ json(200, { list = {}, hasMore = false }) }, { paths = "checklist" })
    for _ in c:connections() do end
    assert.matches("/v2/connections%?", http.requests[1].url)
  end)

  it("pages through subscribers with type and the connection header", function()
    local c, http = make({
      json(200, { list = { { id = 1 }, { id = 2 } }, hasMore = true, nextOffset = 2 }),
      json(200, { list = { { id = 3 } }, hasMore = false }),
    })
    local n = 0
    for _ in c:access("conn_s1"):subscribers({ type = "active", limit = 2 }) do n = n + 1 end
    assert.equal(3, n)
    assert.equal("http://127.0.0.1:9/v2/access/subscribers?limit=2&offset=2&type=active",
      http.requests[2].url)
    assert.equal("conn_s1", http.requests[2].headers["x-connection-id"])
  end)

  it("raises the error object from an iterator when a page fails", function()
    local c = make({ json(200, { list = { { id = "a" } }, hasMore = true }), json(404, { code = "NOPE" }) })
    local ok, err = pcall(function() for _ in c:connections() do end end)
    assert.is_false(ok)
    assert.equal("api", err.kind)
    assert.equal(404, err.status)
  end)

  describe("error policy (ofauth-api.md error table)", function()
    it("SESSION_EXPIRED: marks expired, calls the hook once, no retry, reauth_required", function()
      local st = fakes.store()
      local conns = require("ofauth.connections").new({ store = st, now = function() return 5 end })
      conns:save("user-7", { connection_id = "conn_exp1", status = "active" })
      local calls = {}
      local c, http = make({ json(401, { error = "Session expired", code = "SESSION_EXPIRED" }) }, {
        connections = conns,
        policy = { on_reauth_required = function(rec, ctx) calls[#calls + 1] = { rec, ctx } end },
      })
      local res, err = c:access("conn_exp1"):self()
      assert.is_nil(res)
      assert.equal("reauth_required", err.kind)
      assert.equal("SESSION_EXPIRED", err.code)
      assert.equal(1, #http.requests)
      assert.equal(1, #calls)
      assert.equal("user-7", calls[1][1].user_id)
      assert.equal("expired", conns:get("user-7").status)
      assert.equal(1, metrics.value("ofauth_session_expired_total"))
      -- a second call on the same expired connection does not notify again
      http.script[1] = json(401, { code = "SESSION_EXPIRED" })
      local _, err2 = c:access("conn_exp1"):self()
      assert.equal("reauth_required", err2.kind)
      assert.equal(1, #calls)
    end)

    it("SESSION_EXPIRED: a hook that failed is called again on the next such answer", function()
      local conns = require("ofauth.connections").new({ store = fakes.store() })
      conns:save("u", { connection_id = "conn_h2", status = "active" })
      local attempts, ok_calls = 0, 0
      local c, http = make({ json(401, { code = "SESSION_EXPIRED" }) }, { connections = conns, policy = {
        on_reauth_required = function()
          attempts = attempts + 1
          if attempts == 1 then error("notifier down") end
          ok_calls = ok_calls + 1
        end } })
      c:access("conn_h2"):self()
      http.script[1] = json(401, { code = "SESSION_EXPIRED" })
      c:access("conn_h2"):self()
      http.script[1] = json(401, { code = "SESSION_EXPIRED" })
      c:access("conn_h2"):self()
      assert.equal(2, attempts)
      assert.equal(1, ok_calls)
    end)

    it("SESSION_EXPIRED without a repository still notifies, and connections() keeps working", function()
      local calls = 0
      local c = make({ json(401, { code = "SESSION_EXPIRED" }), json(200, { list = {}, hasMore = false }) },
        { policy = { on_reauth_required = function(rec)
          calls = calls + 1
          assert.equal("conn_x1", rec.connection_id)
        end } })
      local _, err = c:access("conn_x1"):self()
      assert.equal("reauth_required", err.kind)
      assert.equal(1, calls)
      for _ in c:connections() do end
    end)

    it("keeps connections() usable when a repository is given", function()
      local conns = require("ofauth.connections").new({ store = fakes.store() })
      local c = make({ json(200, { list = { { id = "conn_1" } }, hasMore = false }) }, { connections = conns })
      local n = 0
      for _ in c:connections() do n = n + 1 end
      assert.equal(1, n)
    end)

    it("429: backs off honouring Retry-After, then succeeds", function()
      local c, http, clock = make({
        json(429, { error = "slow down", code = "RATE_LIMIT_EXCEEDED" }, { ["retry-after"] = "3" }),
        json(429, { code = "RATE_LIMIT_EXCEEDED" }),
        json(200, { ok = true }),
      })
      assert(c:whoami())
      assert.equal(3, #http.requests)
      assert.same({ 3, 2 }, clock.slept) -- Retry-After, then backoff 1 * 2^1
      assert.equal(2, metrics.value("ofauth_rate_limited_total"))
    end)

    it("429: honours an HTTP-date Retry-After with the injected clock", function()
      local date = "Tue, 14 Nov 2023 22:13:25 GMT" -- 1700000005
      local c, _, clock = make({ json(429, {}, { ["retry-after"] = date }), json(200, {}) })
      assert(c:whoami())
      assert.same({ 5 }, clock.slept)
    end)

    it("429: gives up with rate_limited after max attempts, bounded", function()
      local c, http, clock = make({ json(429, {}), json(429, {}), json(429, {}), json(429, {}) })
      local res, err = c:whoami()
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(4, err.attempts)
      assert.equal(4, #http.requests)
      assert.same({ 1, 2, 4 }, clock.slept)
    end)

    it("429: retries even a POST (the request was not processed)", function()
      local c, http = make({ json(429, {}, { ["retry-after"] = "1" }), json(200, { url = "https://l" }) })
      assert(c:link_init{ redirect_url = "https://a/cb", client_reference_id = "u" })
      assert.equal(2, #http.requests)
    end)

    it("5xx and network errors: bounded retries for GET", function()
      local c, http, clock = make({ json(503, {}), { err = { kind = "timeout", message = "t/o" } },
        json(200, { id = "x" }) })
      assert(c:whoami())
      assert.equal(3, #http.requests)
      assert.same({ 1, 2 }, clock.slept)
    end)

    it("network errors: a typed network error after the last attempt", function()
      local e = { err = { kind = "connect", message = "refused" } }
      local c = make({ e, e, e, e })
      local res, err = c:whoami()
      assert.is_nil(res)
      assert.equal("network", err.kind)
      assert.equal("connect", err.transport)
      assert.equal(4, err.attempts)
    end)

    it("5xx on a POST is not retried unless the caller says it is idempotent", function()
      local c, http = make({ json(502, {}) })
      local _, err = c:request("POST", "/v2/link/init", { body = {} })
      assert.equal("api", err.kind)
      assert.equal(1, #http.requests)
      local c2, http2 = make({ json(502, {}), json(200, {}) })
      assert(c2:request("POST", "/v2/link/init", { body = {}, idempotent = true }))
      assert.equal(2, #http2.requests)
    end)

    it("401 bad key: no retry, typed error with status, code, message, method, path", function()
      local c, http = make({ json(401, { error = "Invalid API key", code = "UNAUTHORIZED",
        details = { hint = "x" } }) })
      local _, err = c:whoami()
      assert.equal(1, #http.requests)
      assert.equal("api", err.kind)
      assert.equal(401, err.status)
      assert.equal("UNAUTHORIZED", err.code)
      assert.equal("Invalid API key", err.message)
      assert.equal("GET", err.method)
      assert.equal("/v2/account/whoami", err.path)
      assert.equal("x", err.body.details.hint)
      assert.not_matches(KEY, tostring(err), 1, true)
    end)

    it("reads the checklist's {type, message} error shape and keeps non-JSON bodies", function()
      local c = make({ json(400, { type = "INVALID_REQUEST", message = "bad" }),
        { status = 500, body = "<html>oops</html>" } }, { policy = { max_attempts = 1 } })
      local _, err = c:request("POST", "/v2/link/init", { body = {} })
      assert.equal("INVALID_REQUEST", err.code)
      assert.equal("bad", err.message)
      local _, err2 = c:whoami()
      assert.equal("<html>oops</html>", err2.body)
    end)

    it("never shows a connection id in clear in an error", function()
      local c = make({ json(404, { error = "conn_secret999 not found" }) })
      local _, err = c:disconnect("conn_secret999")
      local text = tostring(err) .. err.path .. err.message .. cjson.encode(err.body)
      assert.not_matches("conn_secret999", text, 1, true)
      assert.matches("conn_…t999", err.path, 1, true)
    end)

    it("rejects bad arguments before sending anything", function()
      local c, http = make({})
      assert.equal("invalid", select(2, c:request("get", "/x")).kind)
      assert.equal("invalid", select(2, c:request("GET", "x")).kind)
      assert.equal("invalid", select(2, c:request("GET", "/x?y=1")).kind)
      assert.equal("invalid", select(2, c:link_init{ client_reference_id = "u" }).kind)
      -- a missing id is a programming error: it raises, like client:access("")
      assert.has_error(function() c:connection("") end)
      assert.has_error(function() c:access("") end)
      assert.equal(0, #http.requests)
    end)
  end)

  it("counts API calls by endpoint and status class", function()
    local c = make({ json(200, {}), json(404, {}) })
    c:whoami()
    c:request("GET", "/v2/access/posts/123")
    assert.equal(1, metrics.value("ofauth_api_calls_total", { "endpoint", "whoami", "status", "2xx" }))
    assert.equal(1, metrics.value("ofauth_api_calls_total",
      { "endpoint", "/v2/access/posts/:id", "status", "4xx" }))
  end)
end)
