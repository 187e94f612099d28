-- Dependency faults through the emulator: the ofauth client against 429
-- storms, 5xx, slow and dropped responses and SESSION_EXPIRED in the middle
-- of a pagination, injected with the emulator's control API
-- (POST /emulator/faults). The client runs with a short policy, so every
-- case ends quickly; each checks the error kind, how many requests reached
-- the emulator (the fault's remaining count) and that nothing was done twice.
local cjson = require("cjson")
local http = require("oflua.http")
local emulator = require("ofauth.emulator")
local ofauth_client = require("ofauth.client")
local log = require("ofauth.log")

local KEY = "sk_test_faults_spec"
local REDIRECT = "http://127.0.0.1:3000/cb"

describe("ofauth client under dependency faults", function()
  local emu, slept, log_sink

  local function ctl(method, path, body)
    local r = assert(http.request({ method = method, url = emu:url() .. path, timeout_ms = 10000,
      body = body and cjson.encode(body), headers = { ["content-type"] = "application/json" } }))
    return r.status, cjson.decode(r.body)
  end

  local function fault(spec)
    local status, b = ctl("POST", "/emulator/faults", spec)
    assert.equal(201, status, cjson.encode(b))
  end

  -- remaining count of the only fault rule (0 once it is used up and gone)
  local function remaining()
    local _, b = ctl("GET", "/emulator/faults")
    assert.is_true(#b.list <= 1)
    return b.list[1] and b.list[1].count or 0
  end

  local function sessions()
    local _, st = ctl("GET", "/emulator/state")
    return #st.sessions
  end

  local function new_client(policy)
    local p = { max_attempts = 4, base_delay = 0.01, max_delay = 0.05, max_total_delay = 0.5,
      sleep = function(s) slept[#slept + 1] = s; require("oflua.core").sleep(s) end }
    for k, v in pairs(policy or {}) do p[k] = v end
    return assert(ofauth_client.new({ api_key = KEY, base_url = emu:url(), policy = p, timeout_ms = 5000 }))
  end

  local function total(list)
    local t = 0
    for _, s in ipairs(list) do t = t + s end
    return t
  end

  setup(function()
    emu = assert(emulator.start({ api_keys = { KEY }, subscribers = 1000 }))
    log_sink = log.sink
    log.sink = function() end
  end)

  teardown(function()
    log.sink = log_sink
    if emu then emu:stop() end
  end)

  before_each(function()
    slept = {}
    ctl("DELETE", "/emulator/faults")
  end)

  describe("429 storms", function()
    it("retries, then fails with rate_limited after max_attempts and a bounded wait", function()
      fault({ kind = "rate_limit", count = 50, retry_after = 0, path_prefix = "/v2/account/whoami" })
      local res, err = new_client():whoami()
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(429, err.status)
      assert.equal(4, err.attempts)
      assert.equal(46, remaining()) -- exactly 4 requests reached the API
      assert.is_true(total(slept) <= 0.5)
    end)

    it("gives up at once when Retry-After is longer than it is willing to wait", function()
      fault({ kind = "rate_limit", count = 5, retry_after = 120, path_prefix = "/v2/account/whoami" })
      local _, err = new_client():whoami()
      assert.equal("rate_limited", err.kind)
      assert.equal(1, err.attempts)
      assert.equal(120, err.retry_after)
      assert.equal(4, remaining())
      assert.same({}, slept)
    end)

    it("gets through once the storm passes (a POST too: 429 means not processed)", function()
      fault({ kind = "rate_limit", count = 2, retry_after = 0, path_prefix = "/v2/link/init" })
      local before = sessions()
      local res, meta = new_client():request("POST", "/v2/link/init",
        { body = { redirectUrl = REDIRECT, clientReferenceId = "user_429" } })
      assert.is_table(res, tostring(meta))
      assert.equal(3, meta.attempts)
      assert.equal(before + 1, sessions()) -- one Link session, not three
    end)
  end)

  describe("5xx", function()
    it("retries an idempotent call, bounded, then fails with kind api and the status", function()
      fault({ kind = "server_error", count = 50, status = 503, path_prefix = "/v2/account/whoami" })
      local _, err = new_client():whoami()
      assert.equal("api", err.kind)
      assert.equal(503, err.status)
      assert.equal(4, err.attempts)
      assert.equal(46, remaining())
      assert.is_true(total(slept) <= 0.5)
    end)

    it("does not retry a POST (no duplicate side effect)", function()
      fault({ kind = "server_error", count = 5, status = 500, path_prefix = "/v2/link/init" })
      local before = sessions()
      local res, err = new_client():link_init({ redirect_url = REDIRECT, client_reference_id = "user_5xx" })
      assert.is_nil(res)
      assert.equal("api", err.kind)
      assert.equal(500, err.status)
      assert.equal(1, err.attempts)
      assert.equal(4, remaining())
      assert.equal(before, sessions())
      assert.same({}, slept)
    end)

    it("recovers from one 5xx on a GET", function()
      fault({ kind = "server_error", count = 1, status = 502, path_prefix = "/v2/account/whoami" })
      local res, meta = new_client():whoami()
      assert.is_table(res, tostring(meta))
      assert.equal(2, meta.attempts)
    end)
  end)

  describe("slow responses", function()
    it("times out each attempt and ends with a network timeout error", function()
      fault({ kind = "slow", count = 3, delay_ms = 300, path_prefix = "/v2/account/whoami" })
      local client = new_client({ max_attempts = 3 })
      client.timeout_ms = 100
      local _, err = client:whoami()
      assert.equal("network", err.kind)
      assert.equal("timeout", err.transport)
      assert.equal(3, err.attempts)
      -- the emulator is still asleep on the last one: wait for it to answer again
      client.timeout_ms = 5000
      assert.is_table((client:whoami()))
    end)

    it("waits for a slow answer within the timeout", function()
      fault({ kind = "slow", count = 1, delay_ms = 50, path_prefix = "/v2/account/whoami" })
      local res, meta = new_client():whoami()
      assert.is_table(res, tostring(meta))
      assert.equal(1, meta.attempts)
    end)
  end)

  describe("dropped connections", function()
    it("retries a GET until it gets an answer", function()
      fault({ kind = "drop", count = 2, path_prefix = "/v2/account/whoami" })
      local res, meta = new_client():whoami()
      assert.is_table(res, tostring(meta))
      assert.equal(0, remaining())
    end)

    it("fails a POST with a network error without retrying it itself", function()
      local client = new_client()
      fault({ kind = "drop", count = 5, path_prefix = "/v2/link/init" })
      local before = sessions()
      local res, err = client:link_init({ redirect_url = REDIRECT, client_reference_id = "user_drop" })
      assert.is_nil(res)
      assert.equal("network", err.kind)
      assert.equal("reset", err.transport)
      assert.equal(1, err.attempts)
      assert.same({}, slept)
      assert.equal(before, sessions())
      -- exactly one copy reached the server: a POST never goes over a reused
      -- connection, on which libcurl would re-send it after a drop
      assert.equal(4, remaining())
    end)
  end)

  describe("SESSION_EXPIRED in the middle of a pagination", function()
    local conn_id

    setup(function()
      ctl("DELETE", "/emulator/faults")
      local init = assert(new_client():link_init({ redirect_url = REDIRECT, client_reference_id = "user_pages" }))
      local session = init.url:match("/link/([^/?]+)$")
      local status, b = ctl("POST", "/emulator/link/" .. session .. "/complete", { outcome = "success" })
      assert.equal(200, status)
      conn_id = b.connectionId
    end)

    it("stops with reauth_required, tells once, never retries", function()
      local told = {}
      local client = new_client({ on_reauth_required = function(rec, ctx) told[#told + 1] = { rec, ctx } end })
      local seen, n = {}, 0
      local ok, err = pcall(function()
        for sub in client:access(conn_id):subscribers({ limit = 10 }) do
          n = n + 1
          assert.is_nil(seen[sub.id], "a duplicate item")
          seen[sub.id] = true
          if n == 3 then
            fault({ kind = "session_expired", count = 5, path_prefix = "/v2/access/subscribers" })
          end
        end
      end)
      assert.is_false(ok)
      assert.is_table(err, tostring(err))
      assert.equal("reauth_required", err.kind)
      assert.equal(401, err.status)
      assert.equal("SESSION_EXPIRED", err.code)
      assert.equal(1, err.attempts)
      assert.equal(10, n) -- the first page, then the error
      assert.equal(4, remaining())
      assert.equal(1, #told)
      assert.equal(conn_id, told[1][1].connection_id)
      assert.same({}, slept)
      assert.is_nil(tostring(err):find(conn_id, 1, true), "the connection id in an error message")
    end)

    it("rides out a 429 between pages: every item once", function()
      local client = new_client()
      local seen, n = {}, 0
      for sub in client:access(conn_id):subscribers({ limit = 100 }) do
        n = n + 1
        assert.is_nil(seen[sub.id], "a duplicate item")
        seen[sub.id] = true
        if n == 150 then fault({ kind = "rate_limit", count = 2, retry_after = 0, path_prefix = "/v2/access/" }) end
      end
      assert.equal(1000, n)
      assert.equal(0, remaining())
    end)
  end)
end)
