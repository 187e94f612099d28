-- examples/monitoring: the Prometheus alerting rules use only metrics (and
-- label values) that ofauth.metrics really exports; promtool accepts the
-- rules, their unit tests pass, and it parses our /metrics exposition.
local h = require("spec.helper")
local metrics = require("ofauth.metrics")
local webhooks = require("ofauth.webhooks")

local DIR = "examples/monitoring"
local RULES = DIR .. "/rules.yml"

local have_promtool = select(3, h.sh("command -v promtool")) == 0
local function needs_promtool()
  if not have_promtool then
    pending("promtool not found: install Debian's `prometheus` package (scripts/bootstrap does)")
    return false
  end
  return true
end

-- ofauth_* names in a text, histogram series mapped to their family.
local function families(text)
  local seen, list = {}, {}
  for name in text:gmatch("ofauth_[%w_]+") do
    local base = name:match("^(.-)_bucket$") or name:match("^(.-)_sum$") or name:match("^(.-)_count$")
    if base and metrics.help[base] and metrics.help[base][1] == "histogram" then name = base end
    if not seen[name] then
      seen[name] = true
      list[#list + 1] = name
    end
  end
  table.sort(list)
  return list, seen
end

describe("examples/monitoring/rules.yml", function()
  local rules = h.slurp(RULES)

  it("exists", function() assert.is_true(#rules > 0) end)

  it("names only metric families that ofauth.metrics exports", function()
    local list = families(rules)
    assert.is_true(#list >= 6)
    for _, name in ipairs(list) do
      assert.is_truthy(metrics.help[name], name .. " is used in rules.yml but not exported by ofauth.metrics")
    end
    -- and so do the unit tests' input series
    for _, name in ipairs((families(h.slurp(DIR .. "/rules_test.yml")))) do
      assert.is_truthy(metrics.help[name], name .. " is used in rules_test.yml but not exported")
    end
  end)

  it("covers delivery failures, dead letters, rate limits, session expirations and API errors", function()
    local _, used = families(rules)
    for _, name in ipairs({ "ofauth_webhook_rejected_total", "ofauth_webhook_handler_failures_total",
      "ofauth_webhook_dead_lettered_total", "ofauth_rate_limited_total", "ofauth_session_expired_total",
      "ofauth_api_calls_total" }) do
      assert.is_true(used[name] == true, name .. " has no alert")
    end
  end)

  it("matches label values the library produces", function()
    -- reasons of rejected deliveries
    for alt in rules:gmatch('reason=~?"([^"]+)"') do
      for reason in alt:gmatch("[^|]+") do
        assert.is_truthy(webhooks.reasons[reason], "unknown rejection reason " .. reason)
      end
    end
    -- status classes of API calls, as metrics.api_call writes them
    local seen = {}
    metrics.init({ dict = (function()
      local t = {}
      return { incr = function(_, k, n) t[k] = (t[k] or 0) + (n or 1) return t[k] end,
        get = function(_, k) return t[k] end,
        keys = function() local ks = {} for k in pairs(t) do ks[#ks + 1] = k end return ks end }
    end)() })
    metrics.api_call("x", 200, 0.1)
    metrics.api_call("x", 404, 0.1)
    metrics.api_call("x", 503, 0.1)
    metrics.api_call("x", "error_timeout", 0.1)
    for status in metrics.prometheus():gmatch('ofauth_api_calls_total{endpoint="x",status="([^"]+)"}') do
      seen[#seen + 1] = status
    end
    metrics.init()
    table.sort(seen)
    assert.same({ "2xx", "4xx", "5xx", "error_timeout" }, seen)
    -- every alternative of every status matcher (PromQL regexes here use only
    -- '|' and '.*') matches one of them
    for value in rules:gmatch('status=~?"([^"]+)"') do
      for alt in value:gmatch("[^|]+") do
        -- escape everything, then turn the escaped ".*" back into Lua's ".*"
        local pat = "^" .. alt:gsub("%p", "%%%0"):gsub("%%%.%%%*", ".*") .. "$"
        local matched = false
        for _, s in ipairs(seen) do
          if s:match(pat) then matched = true end
        end
        assert.is_true(matched, ("status matcher %q (in %q) matches nothing the library writes"):format(alt, value))
      end
    end
    -- the delivery stage counted for every request
    assert.matches('metrics.webhook("received")', h.slurp("lua/ofauth/webhook_app.lua"), 1, true)
    assert.matches('result="received"', rules, 1, true)
  end)

  it("passes promtool check rules", function()
    if not needs_promtool() then return end
    local out, err, code = h.sh("promtool check rules " .. h.shq(RULES))
    assert.equal(0, code, out .. err)
    assert.matches("SUCCESS", out .. err, 1, true)
  end)

  it("passes its unit tests (promtool test rules)", function()
    if not needs_promtool() then return end
    local out, err, code = h.sh("cd " .. h.shq(DIR) .. " && promtool test rules rules_test.yml")
    assert.equal(0, code, out .. err)
  end)

  it("reads an exposition promtool accepts (promtool check metrics)", function()
    if not needs_promtool() then return end
    metrics.init({ dict = nil })
    metrics.webhook("received")
    metrics.webhook_rejected("bad_signature")
    metrics.handler_failure()
    metrics.dead_lettered()
    metrics.api_call("access_self", 200, 0.2)
    metrics.api_call("access_self", "error_timeout", 10)
    metrics.rate_limited()
    metrics.retry("rate_limited")
    metrics.session_expired()
    local text = metrics.prometheus()
    metrics.init()
    local out, err, code = h.sh("promtool check metrics", { stdin = text })
    assert.equal(0, code, out .. err .. "\n" .. text)
  end)
end)
