-- The native webhook verifier (src/crypto_webhook.c, behind
-- ofauth.webhooks.verify): the same answers as the pure-Lua reference
-- (spec/support/webhooks_reference.lua) on generated headers for both
-- schemes, the signature-entry limit, and the idempotency keys.
local crypto = require("oflua.crypto")
local webhooks = require("ofauth.webhooks")
local ref = require("spec.support.webhooks_reference")

local NOW, TOL = 1700000000, 300
local SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" -- a test secret, not a real one
local RAW = "checklist-secret"
local BODY = '{"eventType":"connection.updated","data":{"id":1}}'

local function svix_sig(id, ts, body, secret)
  local key = crypto.unbase64((secret or SECRET):sub(7))
  return crypto.base64(crypto.hmac("sha256", key, id .. "." .. ts .. "." .. (body or BODY)))
end
local function checklist_sig(ts, body, secret)
  return crypto.hex(crypto.hmac("sha256", secret or RAW, ts .. "." .. (body or BODY)))
end

local function same(a1, b1, a2, b2, what)
  if type(a1) == "table" then
    assert.is_table(a2, what)
    assert.same(a1, a2, what)
  else
    assert.is_nil(a2, what)
    assert.equal(b1, b2, what)
  end
end

describe("native webhook verifier", function()
  it("exports the signature-entry limit", function()
    assert.equal(8, crypto.webhook_max_signatures)
    assert.equal(8, webhooks.max_signatures)
  end)

  it("answers like the Lua reference on generated Svix headers", function()
    math.randomseed(17)
    -- the first choice is the valid one, half the time
    local function pick(t) return math.random(2) == 1 and t[1] or t[math.random(#t)] end
    local ids = { "msg_1", "msg_2", "", "a b", ("x"):rep(256), ("x"):rep(257), "m\127", "m\0n", "é" }
    local tss = { tostring(NOW), tostring(NOW + 300), tostring(NOW - 301), "", "17e8", ("1"):rep(13),
      ("0"):rep(12), " " .. NOW, NOW .. " " }
    local secrets = { SECRET, { "whsec_AAAA", SECRET }, { SECRET, "whsec_!!" }, "whsec_", "whsec_!!",
      "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", { 1 }, "whsec_AAAA" }
    local n, reasons = 0, {}
    for _ = 1, 3000 do
      local id, ts, secret = pick(ids), pick(tss), pick(secrets)
      local good = svix_sig(id, ts)
      local pieces = { "v1," .. good, "v1," .. good, "v1," .. good:lower(), "v1," .. good:sub(1, -2),
        "v2,abc", "v1a,xyz", "v1,", "v1,a,b", "x", "v,abc", "v12,abc", "V1," .. good, "v1,=",
        "v1," .. good .. "=" }
      local seps = { " ", " ", "  ", "\t", " \t" }
      local parts = {}
      for i = 1, math.random(0, math.random(2) == 1 and 2 or 11) do
        parts[#parts + 1] = pick(pieces)
        if i > 1 then parts[#parts] = pick(seps) .. parts[#parts] end
      end
      local sig = table.concat(parts)
      if math.random(6) == 1 then sig = " " .. sig end
      if math.random(6) == 1 then sig = sig .. pick(seps) end
      local body = math.random(10) == 1 and BODY .. " " or BODY
      local m1, r1 = ref.svix(body, id, ts, sig, secret, NOW, TOL)
      local m2, r2 = crypto.webhook_svix(body, id, ts, sig, secret, NOW, TOL)
      same(m1, r1, m2, r2, ("id=%q ts=%q sig=%q"):format(id, ts, sig))
      if m1 then n = n + 1 else reasons[r1] = true end
    end
    assert.is_true(n > 100, "too few accepted cases: " .. n)
    for _, r in ipairs({ "missing_header", "malformed_header", "stale_timestamp", "bad_secret", "bad_signature" }) do
      assert.is_true(reasons[r], "no case rejected as " .. r)
    end
    -- missing headers
    for _, args in ipairs({ { nil, "1", "v1,a" }, { "a", nil, "v1,a" }, { "a", "1", nil } }) do
      same(nil, "missing_header", crypto.webhook_svix(BODY, args[1], args[2], args[3], SECRET, NOW, TOL))
    end
  end)

  it("answers like the Lua reference on generated checklist headers", function()
    math.randomseed(23)
    local function pick(t) return math.random(2) == 1 and t[1] or t[math.random(#t)] end
    local secrets = { RAW, { "other", RAW }, { RAW, "" }, "", { 1 }, "other" }
    local n, reasons = 0, {}
    for _ = 1, 3000 do
      local ts = pick({ tostring(NOW), tostring(NOW + 1), tostring(NOW - 400), "", "1x", ("9"):rep(13) })
      local good = checklist_sig(ts)
      local pieces = { "t=" .. ts, "t=" .. ts, "v1=" .. good, "v1=" .. good, "v1=" .. good:upper(),
        " v1=" .. good .. " ", "v1=" .. good:sub(2), "v1=" .. ("g"):rep(64), "v1=" .. ("0"):rep(64),
        "v0=abc", "garbage", "", " ", "t = " .. ts, "t=" .. ts .. "\t", "t=", "=x", "v1=" }
      local parts = {}
      for _ = 1, math.random(0, math.random(2) == 1 and 3 or 12) do parts[#parts + 1] = pick(pieces) end
      local h = table.concat(parts, ",")
      if math.random(20) == 1 then h = h .. "," .. ("x"):rep(4097 - #h) end
      local secret = pick(secrets)
      local body = math.random(10) == 1 and BODY .. " " or BODY
      local m1, r1 = ref.checklist(body, h, secret, NOW, TOL)
      local m2, r2 = crypto.webhook_checklist(body, h, secret, NOW, TOL)
      same(m1, r1, m2, r2, ("h=%q"):format(h))
      if m1 then n = n + 1 else reasons[r1] = true end
    end
    assert.is_true(n > 40, "too few accepted cases: " .. n)
    for _, r in ipairs({ "malformed_header", "stale_timestamp", "bad_secret", "bad_signature" }) do
      assert.is_true(reasons[r], "no case rejected as " .. r)
    end
  end)

  describe("signature-entry limit", function()
    local ts = tostring(NOW)
    local id = "msg_limit"
    local good = "v1," .. svix_sig(id, ts)
    local function svix(entries, secret)
      return webhooks.verify(BODY, { ["svix-id"] = id, ["svix-timestamp"] = ts,
        ["svix-signature"] = table.concat(entries, " ") }, secret or SECRET, { now = NOW })
    end

    it("accepts 8 Svix entries and refuses 9 before any HMAC", function()
      local entries = {}
      for i = 1, 7 do entries[i] = "v1," .. crypto.base64(("x"):rep(32)) end
      entries[8] = good
      assert.is_table((svix(entries)))
      table.insert(entries, 1, "v1," .. crypto.base64(("y"):rep(32)))
      assert.same({ nil, "malformed_header" }, { svix(entries) })
      -- before any key is derived: an unusable secret would say bad_secret
      assert.same({ nil, "malformed_header" }, { svix(entries, "whsec_!!") })
      assert.same({ nil, "bad_secret" }, { svix({ good }, "whsec_!!") })
    end)

    it("accepts 8 checklist v1 entries and refuses 9 before any HMAC", function()
      local sigs = {}
      for i = 1, 7 do sigs[i] = "v1=" .. ("0"):rep(64) end
      sigs[8] = "v1=" .. checklist_sig(ts)
      local h = "t=" .. ts .. "," .. table.concat(sigs, ",")
      assert.is_table((webhooks.verify(BODY, h, RAW, { now = NOW })))
      h = h .. ",v1=" .. ("1"):rep(64)
      assert.same({ nil, "malformed_header" }, { webhooks.verify(BODY, h, RAW, { now = NOW }) })
      assert.same({ nil, "malformed_header" }, { webhooks.verify(BODY, h, "", { now = NOW }) })
    end)
  end)

  describe("idempotency keys", function()
    it("checklist: the body alone, so a re-signed retry at a later t is a duplicate", function()
      local t1, t2 = tostring(NOW), tostring(NOW + 90)
      local _, m1 = webhooks.verify(BODY, ("t=%s,v1=%s"):format(t1, checklist_sig(t1)), RAW, { now = NOW })
      local _, m2 = webhooks.verify(BODY, ("t=%s,v1=%s"):format(t2, checklist_sig(t2)), RAW, { now = NOW })
      assert.equal("sha256:" .. crypto.hex(crypto.sha256(BODY)), m1.idempotency_key)
      assert.equal(m1.idempotency_key, m2.idempotency_key)
      assert.equal(NOW + 90, m2.timestamp)
      local other = BODY:gsub("1}", "2}")
      local _, m3 = webhooks.verify(other, ("t=%s,v1=%s"):format(t1, checklist_sig(t1, other)), RAW,
        { now = NOW })
      assert.not_equal(m1.idempotency_key, m3.idempotency_key)
    end)

    it("svix: the sender's svix-id (webhook-id), whatever the timestamp", function()
      local ts = tostring(NOW + 10)
      local _, m = webhooks.verify(BODY, { ["webhook-id"] = "msg_k", ["webhook-timestamp"] = ts,
        ["webhook-signature"] = "v1," .. svix_sig("msg_k", ts) }, SECRET, { now = NOW })
      assert.same({ scheme = "svix", id = "msg_k", idempotency_key = "svix:msg_k", timestamp = NOW + 10 }, m)
    end)
  end)

  it("reports a plain-ASCII body so verify skips only then its UTF-8 and NUL checks", function()
    local ts = tostring(NOW)
    local bodies = {
      { BODY, true, "connection.updated" },
      { '{"eventType":"caf\u{e9}"}', false, "caf\u{e9}" }, -- valid UTF-8, not ASCII
      { '{"eventType":"a"}\0junk', false, nil },        -- NUL: cjson would stop there
      { '{"eventType":"\xff"}', false, nil },           -- invalid UTF-8
      { '{"eventType":"a\x7f"}', true, "a\x7f" },
    }
    for _, b in ipairs(bodies) do
      local body, ascii, typ = b[1], b[2], b[3]
      local sig = "v1," .. svix_sig("m", ts, body)
      local meta, flag = crypto.webhook_svix(body, "m", ts, sig, SECRET, NOW, TOL)
      assert.is_table(meta)
      assert.equal(ascii, flag)
      local _, flag2 = crypto.webhook_checklist(body, ("t=%s,v1=%s"):format(ts, checklist_sig(ts, body)),
        RAW, NOW, TOL)
      assert.equal(ascii, flag2)
      local e, why = webhooks.verify(body, { ["svix-id"] = "m", ["svix-timestamp"] = ts,
        ["svix-signature"] = sig }, SECRET, { now = NOW })
      if typ then assert.equal(typ, e.type) else assert.same({ nil, "invalid_json" }, { e, why }) end
      e, why = webhooks.verify(body, ("t=%s,v1=%s"):format(ts, checklist_sig(ts, body)), RAW, { now = NOW })
      if typ then assert.equal(typ, e.type) else assert.same({ nil, "invalid_json" }, { e, why }) end
    end
    -- every length around the 8-byte steps, with the odd byte at every place
    for len = 1, 20 do
      for pos = 1, len do
        for _, odd in ipairs({ "\0", "\x80", "\xff" }) do
          local body = ("a"):rep(pos - 1) .. odd .. ("a"):rep(len - pos)
          local _, flag = crypto.webhook_checklist(body, ("t=%s,v1=%s"):format(ts, checklist_sig(ts, body)),
            RAW, NOW, TOL)
          assert.is_false(flag)
        end
      end
      local plain = ("a"):rep(len)
      local _, flag = crypto.webhook_checklist(plain, ("t=%s,v1=%s"):format(ts, checklist_sig(ts, plain)),
        RAW, NOW, TOL)
      assert.is_true(flag)
    end
  end)

  it("keeps a keyed HMAC per secret across calls and secret changes", function()
    local ts = tostring(NOW)
    -- more distinct secrets than the cache holds, in turns
    for round = 1, 3 do
      for i = 1, 6 do
        local secret = "whsec_" .. crypto.base64(("k"):rep(i + round))
        local key = crypto.unbase64(secret:sub(7))
        local sig = crypto.base64(crypto.hmac("sha256", key, "m." .. ts .. "." .. BODY))
        assert.is_table((crypto.webhook_svix(BODY, "m", ts, "v1," .. sig, secret, NOW, TOL)))
        assert.same({ nil, "bad_signature" },
          { crypto.webhook_svix(BODY, "m", ts, "v1," .. sig, "whsec_" .. crypto.base64("other" .. i), NOW, TOL) })
      end
    end
  end)

  it("validates its arguments", function()
    assert.has_error(function() crypto.webhook_svix(nil, "a", "1", "v1,a", SECRET, NOW, TOL) end)
    assert.has_error(function() crypto.webhook_svix(BODY, "a", "1", "v1,a", SECRET, "now", TOL) end)
    assert.has_error(function() crypto.webhook_checklist(BODY, nil, RAW, NOW, TOL) end)
    assert.has_error(function() crypto.webhook_checklist(BODY, "t=1,v1=" .. ("0"):rep(64), RAW, NOW) end)
    -- checked before anything else, whatever the headers
    assert.has_error(function() crypto.webhook_svix(BODY, nil, nil, nil, SECRET, NOW) end)
    assert.has_error(function() crypto.webhook_svix(BODY, "a", "1", "v1,a") end)
    assert.has_error(function() crypto.webhook_checklist(BODY, "", RAW, "x", TOL) end)
  end)
end)
