local link = require("ofauth.link")
local fakes = require("spec.support.fakes")
local cjson = require("cjson")

local function client_with(answer)
  local http = fakes.http({ answer })
  local c = assert(require("ofauth.client").new({ api_key = "sk_test_linkspec0001", http = http,
    base_url = "http://127.0.0.1:1" }))
  return c, http
end

describe("ofauth.link", function()
  it("starts a session with the user id as clientReferenceId and records it", function()
    local c, http = client_with({ status = 200,
      body = '{"url":"https://link.example/s/1","expiresAt":"2026-11-25T13:00:00Z"}' })
    local st = fakes.store()
    local s = assert(link.start(c, "user-1", { redirect_url = "https://app.example/cb", store = st,
      now = 1000 }))
    assert.equal("https://link.example/s/1", s.url)
    local sent = cjson.decode(http.requests[1].body)
    -- the state travels with the session, in the redirect
    assert.same({ redirectUrl = "https://app.example/cb?oflua_state=" .. s.state, clientReferenceId = "user-1" },
      sent)
    assert.equal("POST", http.requests[1].method)
    local pending = link.pending(st, "user-1")
    assert.equal(1, #pending)
    assert.equal(link.parse_time("2026-11-25T13:00:00Z"), pending[1].expires_at)
    assert.equal(pending[1].expires_at, s.expires_at) -- unix seconds everywhere
    -- the store holds no readable state or secret outside the sealed record
    for k in st:list("") do assert.is_nil(k:find(s.state, 1, true)) end
  end)

  it("reads a white-label clientSecret answer", function()
    local c = client_with({ status = 200, body = '{"clientSecret":"cs_1","expiresAt":null}' })
    local st = fakes.store()
    local s = assert(link.start(c, "u", { redirect_url = "https://a/cb", store = st, now = 0 }))
    assert.equal("cs_1", s.client_secret)
    assert.equal(link.defaults.ttl, s.expires_at)
    assert.equal("cs_1", link.pending(st, "u")[1].client_secret) -- kept to poll the status
  end)

  it("parses every callback outcome", function()
    assert.same({ status = "success", connection_id = "conn_1", client_reference_id = "u" },
      link.parse_callback("status=success&connection_id=conn_1&client_reference_id=u"))
    assert.same({ status = "cancelled", step = "login", client_reference_id = "u" },
      link.parse_callback({ status = "cancelled", step = "login", client_reference_id = "u" }))
    assert.same({ status = "error", error_code = "LOGIN_FAILED", client_reference_id = "a b" },
      link.parse_callback("status=error&error_code=LOGIN_FAILED&client_reference_id=a%20b"))
    assert.same({ nil, "invalid_callback" }, { link.parse_callback("status=maybe") })
    assert.same({ nil, "invalid_callback" }, { link.parse_callback("") })
  end)

  it("rejects a forged callback with no pending session", function()
    local st = fakes.store()
    assert.same({ nil, "unknown_session" },
      { link.callback("status=success&connection_id=conn_x&client_reference_id=victim",
        { store = st, state = "x" }) })
    assert.same({ nil, "unknown_session" }, { link.callback("status=success", { store = st, user_id = "u" }) })
  end)

  it("rejects an expired session and accepts a live one once", function()
    local st = fakes.store()
    link.remember(st, { user_id = "u1", expires_at = 100, state = "s1" })
    assert.same({ nil, "expired_session" },
      { link.callback("status=success&client_reference_id=u1", { store = st, now = 101, state = "s1" }) })
    link.remember(st, { user_id = "u2", expires_at = 100, state = "s2" })
    local cb = assert(link.callback("status=success&connection_id=conn_9&client_reference_id=u2",
      { store = st, now = 50, state = "s2" }))
    assert.equal("u2", cb.user_id)
    assert.equal("conn_9", cb.connection_id)
    assert.same({ nil, "unknown_session" },
      { link.callback("status=success&client_reference_id=u2", { store = st, now = 50, state = "s2" }) })
  end)

  it("refuses a redirect forged for another user's pending session, and keeps that session", function()
    local c = client_with({ status = 200, body = '{"url":"https://l/9"}' })
    local st = fakes.store()
    local s = assert(link.start(c, "user-42", { redirect_url = "https://a/cb", store = st, now = 0 }))
    assert.matches("^%x+$", s.state)
    local forged = "status=cancelled&client_reference_id=user-42"
    assert.same({ nil, "unknown_session" }, { link.callback(forged, { store = st, state = "00", now = 1 }) })
    assert.same({ nil, "wrong_session" }, { link.callback(forged, { store = st, now = 1 }) })
    assert.same({ nil, "wrong_session" }, { link.callback(forged, { store = st, user_id = "mallory", now = 1 }) })
    -- the real redirect still works afterwards
    local cb = assert(link.callback("status=success&client_reference_id=user-42", { store = st, state = s.state,
      now = 1 }))
    assert.equal("user-42", cb.user_id)
  end)

  it("refuses a redirect that nothing binds to a session", function()
    assert.same({ nil, "unknown_session" }, { link.callback("status=success", { store = fakes.store() }) })
  end)

  it("keeps several pending sessions per user; each completes with its own state", function()
    local st = fakes.store()
    local c1 = client_with({ status = 200, body = '{"url":"https://l/1"}' })
    local c2 = client_with({ status = 200, body = '{"url":"https://l/2"}' })
    local a = assert(link.start(c1, "u", { redirect_url = "https://a/cb", store = st, now = 0 }))
    local b = assert(link.start(c2, "u", { redirect_url = "https://a/cb", store = st, now = 1 }))
    assert.equal(2, #link.pending(st, "u"))
    -- the state comes back in the redirect: no cookie needed
    local cb = assert(link.callback("status=success&oflua_state=" .. a.state, { store = st, now = 2 }))
    assert.equal("u", cb.user_id)
    assert.is_nil(cb.state)
    assert.equal(1, #link.pending(st, "u"))
    cb = assert(link.callback("status=cancelled&step=login&oflua_state=" .. b.state, { store = st, now = 2 }))
    assert.equal("cancelled", cb.status)
    assert.equal(0, #link.pending(st, "u"))
  end)

  it("drops a user's expired sessions and keeps at most max_pending", function()
    local st = fakes.store()
    link.remember(st, { user_id = "u", started_at = 1, expires_at = 10, state = "stale" })
    for i = 1, 3 do
      local c = client_with({ status = 200, body = '{"url":"https://l/' .. i .. '"}' })
      assert(link.start(c, "u", { redirect_url = "https://a/cb", store = st, now = 100 + i, max_pending = 2 }))
    end
    local left = link.pending(st, "u")
    assert.equal(2, #left)
    assert.equal(103, left[1].started_at)
    assert.is_nil(st:get("link:s:" .. require("oflua.crypto").hex(require("oflua.crypto").sha256("stale")):sub(1, 24)))
  end)

  it("finds a logged-in user's newest live session by user_id, without client_reference_id", function()
    local st = fakes.store()
    link.remember(st, { user_id = "u", started_at = 1, expires_at = 100, state = "old" })
    link.remember(st, { user_id = "u", started_at = 5, expires_at = 100, state = "new" })
    local cb = assert(link.callback("status=success&connection_id=conn_1", { store = st, user_id = "u", now = 10 }))
    assert.equal("conn_1", cb.connection_id)
    local left = link.pending(st, "u")
    assert.equal(1, #left)
    assert.equal("old", left[1].state)
    assert.same({ nil, "unknown_session" },
      { link.callback("status=success&client_reference_id=v", { store = st, user_id = "u", now = 10 }) })
  end)

  it("polls a session's status until it is final or waits for 2FA", function()
    local http = fakes.http({
      { status = 200, body = '{"status":"initialized"}' },
      { status = 200, body = '{"status":"pending"}' },
      { status = 200, body = '{"status":"completed","data":{"id":"conn_1"}}' } })
    local c = assert(require("ofauth.client").new({ api_key = "sk_test_linkspec0001", http = http,
      base_url = "http://127.0.0.1:1" }))
    local seen = {}
    local t = 0
    local res = assert(link.wait(c, "cs_abc", { interval = 1, sleep = function(d) t = t + d end,
      now = function() return t end, on_status = function(r) seen[#seen + 1] = r.status end }))
    assert.equal("completed", res.status)
    assert.same({ "initialized", "pending", "completed" }, seen)
    assert.matches("/v2/link/cs_abc$", http.requests[1].url)
  end)

  it("reconnects with the stored connection id", function()
    local c, http = client_with({ status = 200, body = '{"url":"https://l/2"}' })
    local st = fakes.store()
    local conns = require("ofauth.connections").new({ store = st, now = function() return 1 end })
    conns:save("u", { connection_id = "conn_old1", status = "expired" })
    assert(link.reconnect(c, "u", { connections = conns, redirect_url = "https://a/cb", now = 1 }))
    assert.equal("conn_old1", cjson.decode(http.requests[1].body).connectionId)
  end)

  it("refuses to reconnect a user with nothing stored", function()
    local c = client_with({ status = 200, body = "{}" })
    local conns = require("ofauth.connections").new({ store = fakes.store() })
    local ok, err = link.reconnect(c, "nobody", { connections = conns, redirect_url = "https://a/cb" })
    assert.is_nil(ok)
    assert.equal("invalid", err.kind)
  end)

  it("parses ISO times in UTC with offsets and fractions", function()
    assert.equal(1445412480, link.parse_time("2015-10-21T07:28:00Z"))
    assert.equal(1445412480, link.parse_time("2015-10-21T07:28:00.123Z"))
    assert.equal(1445412480, link.parse_time("2015-10-21T09:28:00+02:00"))
    assert.is_nil(link.parse_time("yesterday"))
  end)
end)
