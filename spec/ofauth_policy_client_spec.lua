-- Per-client policies through the client: every decision is called on the
-- client's own policy, two clients with different policies live side by
-- side, Retry-After is honoured on 429 and 503 in every form, the call's
-- deadline bounds attempts and waits, local errors fail at once, and
-- integers stay exact both ways.
local fakes = require("spec.support.fakes")
local client_mod = require("ofauth.client")
local ojson = require("ofauth.json")
local metrics = require("ofauth.metrics")

local KEY = "sk_test_policyclient_0123456789"

local function make(script, policy)
  local http = fakes.http(script)
  local clock = fakes.clock(784111777 - 100)
  local pol = { sleep = clock.sleep, now = clock.now, random = function() return 1 end,
    base_delay = 1, max_delay = 100, max_total_delay = 300, max_attempts = 4,
    monotonic = clock.now }
  for k, v in pairs(policy or {}) do pol[k] = v end
  local c = assert(client_mod.new({ api_key = KEY, base_url = "http://127.0.0.1:9/", http = http, policy = pol }))
  return c, http, clock
end

local function json(status, tbl, headers)
  return { status = status, body = ojson.encode(tbl), headers = headers }
end

describe("per-client policies", function()
  before_each(function() metrics.init() end)

  it("calls each client's own backoff and SESSION_EXPIRED reaction (two clients, one process)", function()
    local reactions = {}
    local a, _, clock_a = make({ json(500, {}), json(200, { id = 1 }),
      json(401, { code = "SESSION_EXPIRED" }) }, {
      backoff = function(_, attempt) return 42 + attempt end,
      on_session_expired = function(_, _, conn_id) reactions[#reactions + 1] = "a:" .. tostring(conn_id) end,
    })
    local b, _, clock_b = make({ json(500, {}), json(200, { id = 2 }),
      json(401, { code = "SESSION_EXPIRED" }) })
    assert(a:whoami())
    assert(b:whoami())
    assert.same({ 43 }, clock_a.slept)
    assert.same({ 1 }, clock_b.slept) -- the default backoff: base_delay * 2^0 * random()=1
    local _, err = a:access("conn_a"):request("GET", "/posts")
    assert.equal("reauth_required", err.kind)
    _, err = b:access("conn_b"):request("GET", "/posts")
    assert.equal("reauth_required", err.kind)
    assert.same({ "a:conn_a" }, reactions) -- b used the default reaction
  end)

  it("never shares nested tables between clients", function()
    local a = make({})
    local b = make({})
    a.policy.retry_statuses[404] = true
    assert.is_nil(b.policy.retry_statuses[404])
  end)

  it("honours Retry-After on 429 and 503 as seconds and in the three HTTP date forms", function()
    local now = 784111777 - 100
    local forms = { "7", "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
      "Sun Nov  6 08:49:37 1994" }
    for _, status in ipairs({ 429, 503 }) do
      for _, form in ipairs(forms) do
        local c, http, clock = make({ json(status, {}, { ["retry-after"] = form }), json(200, {}) })
        assert(c:whoami())
        assert.equal(2, #http.requests)
        assert.equal(form == "7" and 7 or 100, clock.slept[1], status .. " " .. form)
        assert.equal(now + clock.slept[1], clock.now())
      end
    end
  end)

  it("bounds the whole call with a deadline", function()
    local c, http = make({ json(503, {}), json(503, {}), json(503, {}), json(200, {}) },
      { backoff = function() return 4 end })
    local _, err = c:request("GET", "/v2/account/whoami", { deadline = 6 })
    assert.equal("api", err.kind)
    assert.equal(2, #http.requests) -- 0 s, 4 s; a third try at 8 s would pass the deadline
    assert.is_true(http.requests[2].timeout_ms <= 2000)
  end)

  it("fails local errors at once with kind invalid", function()
    local c, http = make({ { err = { kind = "too_large", message = "answer above max_body" } } })
    local _, err = c:whoami()
    assert.equal("invalid", err.kind)
    assert.equal(1, #http.requests)
    _, err = c:request("GET", "/v2/account/whoami", { headers = { ["x-a"] = "1\r\nx-b: 2" } })
    assert.equal("invalid", err.kind)
    assert.equal(1, #http.requests)
  end)

  it("treats {isAuth: false} from GET /v2/access/self as an expired session", function()
    local c = make({ json(200, { isAuth = false }) })
    local _, err = c:access("conn_x"):self()
    assert.equal("reauth_required", err.kind)
  end)
end)

describe("exact 64-bit integers", function()
  it("go out exactly in request bodies and come back as Lua integers", function()
    local big = (1 << 53) + 1
    local c, http = make({ { status = 200, body = '{"id":9007199254740993,"ids":[123456789012345,'
      .. '9223372036854775807],"price":1.5,"n":3}' } })
    local res = assert(c:access("conn_x"):call("access.vault.lists.createMedia",
      { listId = 1, mediaIds = { 123456789012345, big } }))
    assert.equal('{"mediaIds":[123456789012345,9007199254740993]}', http.requests[1].body)
    assert.equal(big, res.id)
    assert.equal("integer", math.type(res.id))
    assert.equal(math.maxinteger, res.ids[2])
    assert.equal(1.5, res.price)
    assert.equal("integer", math.type(res.n))
  end)

  it("survives hostile text (fuzz)", function()
    math.randomseed(7)
    local alphabet = { "1", "9", "0", "-", ".", "e", '"', "\\", "[", "]", "{", "}", ",", ":", " ",
      "12345678901234567", "u0000", "x" }
    for _ = 1, 3000 do
      local parts = {}
      for i = 1, math.random(1, 20) do parts[i] = alphabet[math.random(#alphabet)] end
      local text = table.concat(parts)
      local ok = pcall(ojson.decode, text)
      assert.is_true(ok, text)
    end
    -- a long digit run inside a string stays a string
    local v = ojson.decode('["12345678901234567", 12345678901234567]')
    assert.equal("12345678901234567", v[1])
    assert.equal(12345678901234567, v[2])
  end)
end)
