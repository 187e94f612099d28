local policy = require("ofauth.policy")

describe("ofauth.policy", function()
  describe("Retry-After", function()
    it("reads delta seconds", function()
      assert.equal(7, policy.retry_after("7"))
      assert.equal(0, policy.retry_after(" 0 "))
    end)

    it("reads an HTTP date relative to now", function()
      -- 2015-10-21T07:28:00Z = 1445412480
      assert.equal(30, policy.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412450))
      assert.equal(0, policy.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412999))
    end)

    it("reads HTTP dates as unix seconds", function()
      assert.equal(1445412480, policy.http_date("Wed, 21 Oct 2015 07:28:00 GMT"))
      assert.equal(951782400, policy.http_date("Tue, 29 Feb 2000 00:00:00 GMT"))
      assert.is_nil(policy.http_date("21 Oct 2015"))
    end)

    it("ignores what it cannot read", function()
      assert.is_nil(policy.retry_after(nil))
      assert.is_nil(policy.retry_after("soon"))
      assert.is_nil(policy.retry_after("-5"))
      assert.is_nil(policy.retry_after("99999999999999"))
    end)
  end)

  describe("classify", function()
    local p = policy.new()
    it("sorts answers into outcomes", function()
      assert.equal("ok", policy.classify(p, 200))
      assert.equal("ok", policy.classify(p, 204))
      assert.equal("session_expired", policy.classify(p, 401, "SESSION_EXPIRED"))
      assert.equal("session_expired", policy.classify(p, 403, "SESSION_EXPIRED"))
      assert.equal("rate_limited", policy.classify(p, 429))
      assert.equal("rate_limited", policy.classify(p, 400, "RATE_LIMIT_EXCEEDED"))
      assert.equal("retryable", policy.classify(p, 503))
      assert.equal("retryable", policy.classify(p, 0, nil, { kind = "timeout" }))
      assert.equal("fatal", policy.classify(p, 401, "UNAUTHORIZED"))
      assert.equal("fatal", policy.classify(p, 404))
      assert.equal("fatal", policy.classify(p, 501))
    end)
  end)

  describe("next_delay", function()
    local p = policy.new({ random = function() return 1 end, base_delay = 1, max_delay = 8,
      max_total_delay = 20, max_attempts = 5 })

    it("backs off exponentially up to the cap", function()
      local delays = {}
      for attempt = 1, 4 do
        delays[attempt] = policy.next_delay(p, "retryable",
          { attempt = attempt, waited = 0, method = "GET" })
      end
      assert.same({ 1, 2, 4, 8 }, delays)
    end)

    it("uses full jitter", function()
      local q = policy.new({ random = function() return 0.25 end, base_delay = 4 })
      assert.equal(1, policy.next_delay(q, "retryable", { attempt = 1, waited = 0, method = "GET" }))
    end)

    it("stops after max_attempts and at the total budget", function()
      assert.is_nil(policy.next_delay(p, "retryable", { attempt = 5, waited = 0, method = "GET" }))
      assert.is_nil(policy.next_delay(p, "retryable", { attempt = 2, waited = 19, method = "GET" }))
    end)

    it("retries network errors and 5xx only for idempotent methods unless told", function()
      assert.is_nil(policy.next_delay(p, "retryable", { attempt = 1, waited = 0, method = "POST" }))
      assert.equal(1, policy.next_delay(p, "retryable",
        { attempt = 1, waited = 0, method = "POST", idempotent = true }))
      assert.is_nil(policy.next_delay(p, "retryable",
        { attempt = 1, waited = 0, method = "GET", idempotent = false }))
    end)

    it("retries a POST whose request never left (connect, dns)", function()
      assert.equal(1, policy.next_delay(p, "retryable",
        { attempt = 1, waited = 0, method = "POST", transport = "connect" }))
      assert.is_nil(policy.next_delay(p, "retryable",
        { attempt = 1, waited = 0, method = "POST", transport = "timeout" }))
    end)

    it("honours Retry-After for rate limits, for any method", function()
      assert.equal(3, policy.next_delay(p, "rate_limited",
        { attempt = 1, waited = 0, method = "POST", retry_after = 3 }))
    end)

    it("waits at least base_delay when Retry-After is 0 or in the past", function()
      assert.equal(1, policy.next_delay(p, "rate_limited",
        { attempt = 1, waited = 0, method = "GET", retry_after = 0 }))
    end)

    it("gives up when Retry-After is longer than it may wait", function()
      assert.is_nil(policy.next_delay(p, "rate_limited",
        { attempt = 1, waited = 0, method = "GET", retry_after = 60 }))
    end)

    it("never retries SESSION_EXPIRED or other 4xx", function()
      assert.is_nil(policy.next_delay(p, "session_expired", { attempt = 1, waited = 0, method = "GET" }))
      assert.is_nil(policy.next_delay(p, "fatal", { attempt = 1, waited = 0, method = "GET" }))
    end)
  end)

  it("copies the defaults deeply: one policy's tables are its own", function()
    local a = policy.new({ max_attempts = 2 })
    local b = policy.new()
    a.retry_statuses[404] = true
    assert.is_nil(b.retry_statuses[404])
    assert.is_nil(policy.defaults.retry_statuses[404])
    assert.equal(2, a.max_attempts)
    assert.equal(policy.defaults.max_attempts, b.max_attempts)
    -- a global default changed later only applies to policies made after it
    local saved = policy.defaults.base_delay
    policy.defaults.base_delay = 9
    assert.equal(saved, b.base_delay)
    assert.equal(9, policy.new().base_delay)
    policy.defaults.base_delay = saved
  end)

  describe("Retry-After in every HTTP date form (RFC 9110 5.6.7)", function()
    local p = policy.new()
    local now = 784111777 - 30 -- 1994-11-06T08:49:37Z minus 30 s
    it("IMF-fixdate", function()
      assert.equal(30, p:retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now))
    end)
    it("RFC 850", function()
      assert.equal(30, p:retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now))
    end)
    it("asctime", function()
      assert.equal(30, p:retry_after("Sun Nov  6 08:49:37 1994", now))
    end)
    it("delta seconds", function()
      assert.equal(12, p:retry_after("12", now))
    end)
    it("refuses impossible dates", function()
      assert.is_nil(p:retry_after("Sun, 36 Nov 1994 08:49:37 GMT", now))
      assert.is_nil(p:retry_after("Sun Nov  6 25:49:37 1994", now))
    end)
  end)

  it("honours Retry-After on 503 as on 429", function()
    local p = policy.new({ base_delay = 0.1, max_delay = 60, jitter = "none" })
    assert.equal(7, p:next_delay("retryable", { attempt = 1, waited = 0, method = "GET", status = 503,
      retry_after = 7 }))
    assert.equal(7, p:next_delay("rate_limited", { attempt = 1, waited = 0, method = "POST", status = 429,
      retry_after = 7 }))
    -- a 500 ignores it (backoff)
    assert.equal(0.1, p:next_delay("retryable", { attempt = 1, waited = 0, method = "GET", status = 500,
      retry_after = 7 }))
  end)

  it("never retries past the call's deadline", function()
    local p = policy.new({ base_delay = 1, jitter = "none" })
    assert.is_nil(p:next_delay("retryable", { attempt = 1, waited = 0, method = "GET", remaining = 0.5 }))
    assert.equal(1, p:next_delay("retryable", { attempt = 1, waited = 0, method = "GET", remaining = 5 }))
  end)

  it("classifies local transport errors as invalid and {isAuth: false} on self as expired", function()
    local p = policy.new()
    assert.equal("invalid", p:classify(0, nil, { kind = "invalid" }))
    assert.equal("invalid", p:classify(0, nil, { kind = "too_large" }))
    assert.equal("session_expired", p:classify(200, nil, nil,
      { method = "GET", path = "/v2/access/self", body = { isAuth = false } }))
    assert.equal("ok", p:classify(200, nil, nil,
      { method = "GET", path = "/v2/access/self", body = { isAuth = true, id = 1 } }))
  end)
end)
