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
    assert.same({ redirectUrl = "https://app.example/cb", clientReferenceId = "user-1" }, sent)
    assert.equal("POST", http.requests[1].method)
    local pending = cjson.decode(st:get("link:user-1"))
    assert.equal(link.parse_time("2026-11-25T13:00:00Z"), pending.expires_at)
  end)

  it("reads a white-label clientSecret answer", function()
    local c = client_with({ status = 200, body = '{"clientSecret":"cs_1","expiresAt":null}' })
    local s = assert(link.start(c, "u", { redirect_url = "https://a/cb", store = fakes.store(), now = 0 }))
    assert.equal("cs_1", s.client_secret)
    assert.equal(link.defaults.ttl, s.expires_at)
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
    st:put("link:u1", cjson.encode({ user_id = "u1", expires_at = 100, state = "s1" }))
    assert.same({ nil, "expired_session" },
      { link.callback("status=success&client_reference_id=u1", { store = st, now = 101, state = "s1" }) })
    st:put("link:u2", cjson.encode({ user_id = "u2", expires_at = 100, state = "s2" }))
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
    assert.same({ nil, "wrong_session" }, { link.callback(forged, { store = st, state = "00", now = 1 }) })
    assert.same({ nil, "wrong_session" }, { link.callback(forged, { store = st, user_id = "mallory", now = 1 }) })
    -- the real redirect still works afterwards
    local cb = assert(link.callback("status=success&client_reference_id=user-42", { store = st, state = s.state,
      now = 1 }))
    assert.equal("user-42", cb.user_id)
  end)

  it("requires something that binds the redirect to its browser or user", function()
    assert.has_error(function() link.callback("status=success", { store = fakes.store() }) end)
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
