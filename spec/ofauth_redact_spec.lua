local redact = require("ofauth.redact")
local errors = require("ofauth.errors")

describe("ofauth.redact", function()
  it("shortens connection ids to prefix and last four", function()
    assert.equal("conn_…c123", redact.id("conn_abcdefc123"))
    assert.equal("conn_…", redact.id("conn_ab"))
    assert.equal("GET /v2/account/connections/conn_…9xyz",
      redact.text("GET /v2/account/connections/conn_123456789xyz"))
  end)

  it("removes registered secrets from text", function()
    redact.register_secret("sk_test_supersecretvalue")
    assert.equal("key [redacted] here", redact.text("key sk_test_supersecretvalue here"))
  end)

  it("redacts nested values", function()
    local v = redact.value({ a = { "conn_abcdef0001" }, conn_abcdef0002 = true })
    assert.equal("conn_…0001", v.a[1])
    assert.is_true(v["conn_…0002"])
  end)
end)

describe("ofauth.errors", function()
  it("formats a readable line without secrets", function()
    local e = errors.new("api", { status = 404, code = "NOT_FOUND", message = "no conn_abcdef9876",
      method = "GET", path = "/v2/account/connections/conn_abcdef9876", attempts = 1 })
    local s = tostring(e)
    assert.matches("ofauth api error", s, 1, true)
    assert.matches("status 404 NOT_FOUND", s, 1, true)
    assert.not_matches("conn_abcdef9876", s, 1, true)
    assert.is_true(errors.is(e))
  end)

  it("refuses unknown kinds", function()
    assert.has_error(function() errors.new("oops") end)
  end)
end)
