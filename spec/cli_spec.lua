-- luacheck: ignore 311 (specs reuse out/err/code across several runs)
-- The operator commands end to end: oflua webhook, oflua ofauth and oflua
-- doctor against the local emulator and a real receiver, on 127.0.0.1.
local h = require("spec.helper")
local cjson = require("cjson")
local http = require("oflua.http")
local server = require("oflua.server")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")

local API_KEY = "sk_test_cli_spec_" .. require("oflua.crypto").hex(require("oflua.crypto").random(6))
local SECRET = webhooks.new_secret()

local emu, receiver, dict, dict_name, tmpdir, db, key

local function env(extra)
  local e = { OFAUTH_API_KEY = API_KEY, OFAUTH_BASE_URL = emu:url(), OFAUTH_LOG = "error" }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function post(url, body)
  local resp = assert(http.request({ method = "POST", url = url, body = cjson.encode(body),
    headers = { ["content-type"] = "application/json" } }))
  return resp.status, cjson.decode(resp.body)
end

-- Link a user through the emulator; returns the connection id.
local function connect(user)
  local c = assert(require("ofauth").client({ api_key = API_KEY, base_url = emu:url() }))
  local res = assert(c:link_init({ redirect_url = "http://127.0.0.1:1/cb", client_reference_id = user }))
  local status, body = post(emu:url() .. "/emulator/link/" .. res.url:match("/link/([^/?#]+)") .. "/complete",
    { outcome = "success" })
  assert.equal(200, status)
  return body.connectionId
end

setup(function()
  tmpdir = h.tmpdir()
  db = tmpdir .. "/recv.db"
  key = store.keygen()
  emu = assert(require("ofauth.emulator").start({ api_keys = { API_KEY }, subscribers = 230 }))
  dict_name = "cli_spec_" .. tostring(os.time()) .. math.random(1e6)
  dict = server.shared(dict_name)
  receiver = assert(server.listen({ script = h.source_dir .. "/spec/fixtures/servers/receiver.lua", workers = 1,
    args = { store = db, key = key, secret = SECRET, dict = dict_name } }))
end)

teardown(function()
  if receiver then receiver:close() end
  if emu then emu:stop() end
  os.execute("rm -rf " .. h.shq(tmpdir))
end)

describe("oflua webhook", function()
  local body = '{"eventType":"connection.updated","data":{}}'

  it("signs a body and verifies it back (svix)", function()
    local sign_env = { OFAUTH_WEBHOOK_SECRET = SECRET }
    local out, err, code = h.oflua({ "webhook", "sign", "--json" }, { stdin = body, env = sign_env })
    assert.equal(0, code, err)
    local headers = cjson.decode(out)
    assert.matches("^v1,", headers["svix-signature"])
    local args = { "webhook", "verify" }
    for k, v in pairs(headers) do
      args[#args + 1] = "--header"
      args[#args + 1] = k .. ": " .. v
    end
    out, err, code = h.oflua(args, { stdin = body, env = { OFAUTH_WEBHOOK_SECRET = SECRET } })
    assert.equal(0, code, err)
    assert.matches("valid: connection.updated event (svix scheme", out, 1, true)
    out, err, code = h.oflua(args, { stdin = body .. " ", env = { OFAUTH_WEBHOOK_SECRET = SECRET } })
    assert.equal(1, code)
    assert.equal("oflua webhook: invalid: bad_signature\n", err)
  end)

  it("signs and verifies with the checklist scheme and a raw secret", function()
    local out, _, code = h.oflua({ "webhook", "sign", "--scheme", "checklist", "--secret", "raw-secret-123" },
      { stdin = body })
    assert.equal(0, code)
    local value = out:match("^ofauth%-signature: (t=%d+,v1=%x+)\n$")
    assert.truthy(value)
    local err
    out, err, code = h.oflua({ "webhook", "verify", "--secret", "raw-secret-123", "--header",
      "ofauth-signature: " .. value, "--json" }, { stdin = body })
    assert.equal(0, code, err)
    assert.equal("checklist", cjson.decode(out).scheme)
  end)

  it("fails with one line without a secret or with a bad header", function()
    local out, err, code = h.oflua({ "webhook", "sign" }, { stdin = body })
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("oflua webhook: no webhook secret: pass --secret or set OFAUTH_WEBHOOK_SECRET\n", err)
    out, err, code = h.oflua({ "webhook", "verify", "--secret", SECRET, "--header", "nocolon" }, { stdin = body })
    assert.equal(1, code)
    assert.matches("--header must look like 'name: value'", err, 1, true)
    out, err, code = h.oflua({ "webhook", "frob" })
    assert.equal(2, code) -- a usage error
    assert.matches("unknown command 'frob'", err, 1, true)
  end)

  it("triggers a signed test event at a receiver", function()
    local out, err, code = h.oflua({ "webhook", "trigger", "--url", receiver:url(), "--type", "connection.created",
      "--secret", SECRET })
    assert.equal(0, code, err)
    assert.matches("^connection.created %-> 200", out)
    assert.equal(1, dict:get("handled:connection.created"))
    out, err, code = h.oflua({ "webhook", "trigger", "--url", receiver:url(), "--secret", SECRET })
    assert.equal(0, code, err)
    assert.matches("^oflua.test %-> 200", out)
    assert.equal(1, dict:get("handled:oflua.test"))
  end)

  it("reports a receiver that is not there", function()
    local _, err, code = h.oflua({ "webhook", "trigger", "--url", "http://127.0.0.1:1/x", "--secret", SECRET })
    assert.equal(1, code)
    assert.matches("^oflua webhook: could not deliver to http://127.0.0.1:1/x: ", err)
  end)

  it("exits 1 when the receiver refuses the event", function()
    local out, _, code = h.oflua({ "webhook", "trigger", "--url", receiver:url(), "--secret", webhooks.new_secret() })
    assert.equal(1, code)
    assert.matches("%-> 401", out)
  end)

  it("replays dead-lettered events through the app's handlers", function()
    dict:set("fail", true)
    local out, err, code = h.oflua({ "webhook", "trigger", "--url", receiver:url(), "--type", "rules.updated",
      "--data", '{"rules":{},"revision":2}', "--secret", SECRET })
    assert.equal(0, code, err) -- acknowledged: the event is durable even though the handler failed
    assert.matches("%-> 200", out)
    local st = assert(store.open({ path = db, key = key }))
    assert.equal(1, #st:inbox_dead())
    dict:set("fail", nil)
    local app = h.write_file(tmpdir .. "/app.lua", ([[
      local ofauth = require("ofauth")
      local store = require("oflua.store")
      local st = assert(store.open({ path = %q, key = %q }))
      local app = ofauth.webhooks.app({ secret = %q, store = st })
      app:on("rules.updated", function() io.stdout:write("handled rules.updated\n") end)
      return { webhooks = app }]]):format(db, key, SECRET))
    out, err, code = h.oflua({ "webhook", "replay", "--app", app, "--dead" })
    assert.equal(0, code, err)
    assert.matches("handled rules.updated", out, 1, true)
    assert.matches("requeued 1 event(s): 1 processed, 0 failed", out, 1, true)
    assert.equal(0, #st:inbox_dead())
    out, err, code = h.oflua({ "webhook", "replay", "--app", app, "--dead" })
    assert.equal(0, code, err) -- nothing dead is not a failure
    assert.equal("no dead letters to replay\n", out)
    st:close()
  end)
end)

describe("oflua ofauth", function()
  it("checks the key with whoami", function()
    local out, err, code = h.oflua({ "ofauth", "whoami" }, { env = env() })
    assert.equal(0, code, err)
    assert.matches("environment: sandbox", out, 1, true)
    local _
    out, _, code = h.oflua({ "ofauth", "whoami", "--format", "json" }, { env = env() })
    assert.equal(0, code)
    assert.is_table(cjson.decode(out).permissions)
  end)

  it("explains a refused key in one line without the key", function()
    local _, err, code = h.oflua({ "ofauth", "whoami" }, { env = env({ OFAUTH_API_KEY = "sk_test_wrong_key_123" }) })
    assert.equal(1, code)
    assert.matches("^oflua ofauth: ofauth api error %(GET /v2/account/whoami%) status 401", err)
    assert.not_matches("sk_test_wrong_key_123", err, 1, true)
    assert.equal(1, select(2, err:gsub("\n", "")))
  end)

  it("lists every connection as CSV, ids shortened unless --reveal-ids", function()
    local ids = { connect("csv-user-1"), connect("csv-user-2"), connect("csv-user-3") }
    local out, err, code = h.oflua({ "ofauth", "connections", "--format", "csv", "--page-size", "2" }, { env = env() })
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("id,status,clientReferenceId,username,permissions,updatedAt", lines[1])
    assert.is_true(#lines >= 4)
    for _, id in ipairs(ids) do assert.not_matches(id, out, 1, true) end
    assert.matches("csv%-user%-2", out)
    out = h.oflua({ "ofauth", "connections", "--format", "json" }, { env = env() })
    for _, id in ipairs(ids) do assert.not_matches(id, out, 1, true) end
    assert.matches('"id":"conn_…', out, 1, true)
    out = h.oflua({ "ofauth", "connections", "--format", "json", "--reveal-ids" }, { env = env() })
    local list = cjson.decode(out)
    local seen = {}
    for _, c in ipairs(list) do seen[c.id] = true end
    for _, id in ipairs(ids) do assert.is_true(seen[id]) end
  end)

  it("exports subscribers across pages, streaming JSON", function()
    local id = connect("subs-user")
    local out, err, code = h.oflua({ "ofauth", "subscribers", "--connection", id, "--format", "json",
      "--page-size", "100" }, { env = env() })
    assert.equal(0, code, err)
    assert.equal(230, #cjson.decode(out))
    out = h.oflua({ "ofauth", "subscribers", "--connection", id, "--max", "7", "--format", "csv" }, { env = env() })
    local n = select(2, out:gsub("\n", ""))
    assert.equal(8, n) -- header + 7
  end)

  it("stops with the rows already written and one error line when a page fails", function()
    local id = connect("fail-user")
    post(emu:url() .. "/emulator/faults", { kind = "session_expired", connection_id = id })
    local out, err, code = h.oflua({ "ofauth", "subscribers", "--connection", id, "--format", "csv" }, { env = env() })
    http.request({ method = "DELETE", url = emu:url() .. "/emulator/faults" })
    assert.equal(1, code)
    assert.matches("^id,", out)
    assert.matches("^oflua ofauth: stopped after 0 rows: ofauth reauth_required error", err)
    assert.not_matches(id, err, 1, true)
  end)

  it("starts a Link session and prints its URL", function()
    local out, err, code = h.oflua({ "ofauth", "link", "--user", "bob", "--redirect-url", "http://127.0.0.1:1/cb" },
      { env = env() })
    assert.equal(0, code, err)
    assert.matches("^" .. emu:url():gsub("%p", "%%%0") .. "/link/", out)
    assert.matches("not recorded", err, 1, true)
    out, err, code = h.oflua({ "ofauth", "link", "--user", "bob" }, { env = env() })
    assert.equal(2, code)
    assert.matches("--redirect-url is required", err, 1, true)
    out, err, code = h.oflua({ "ofauth", "link", "--user", "--redirect-url", "http://127.0.0.1:1/cb" },
      { env = env() })
    assert.equal(2, code) -- a usage error, before any request
    assert.matches("^oflua ofauth: option %-%-user needs a value\n", err)
  end)
end)

describe("oflua doctor", function()
  it("fails each check with a hint when nothing is configured", function()
    local out, _, code = h.oflua({ "doctor" })
    assert.equal(1, code)
    assert.matches("✗ api_key", out, 1, true)
    assert.matches("hint: export OFAUTH_API_KEY", out, 1, true)
    assert.matches("✗ store", out, 1, true)
    assert.matches("5 check%(s%) failed", out)
  end)

  it("passes what is configured and reports the rest in JSON", function()
    local out, _, code = h.oflua({ "doctor", "--json", "--skip", "webhook", "--skip", "store", "--skip", "access",
      "--redirect-url", "http://127.0.0.1:1/cb" }, { env = env() })
    assert.equal(0, code, out)
    local r = cjson.decode(out)
    assert.is_true(r.ok)
    assert.is_true(r.checks[1].ok)
    assert.equal("api_key", r.checks[1].check)
    assert.matches("clock within %d+ s", r.checks[1].detail)
    assert.is_true(r.checks[2].ok)
    assert.is_true(r.checks[3].skipped)
  end)

  it("checks a webhook endpoint with a signed and a forged event", function()
    local out, _, code = h.oflua({ "doctor", "--skip", "store", "--skip", "access", "--skip", "link",
      "--webhook-url", receiver:url(), "--secret", SECRET }, { env = env() })
    assert.equal(0, code, out)
    assert.matches("✓ webhook", out, 1, true)
    assert.matches("answers 200 to a signed event and 401 to a forged one", out, 1, true)
  end)

  it("warns, without failing, when the example app's admin token or public URL is unset", function()
    local skip = { "doctor", "--skip", "api_key", "--skip", "link", "--skip", "webhook", "--skip", "store",
      "--skip", "access" }
    local out, _, code = h.oflua(skip, { env = { OFLUA_ADMIN_TOKEN = "", OFLUA_PUBLIC_URL = "", APP_PUBLIC_URL = "" } })
    assert.equal(0, code, out)
    assert.matches("! app      OFLUA_ADMIN_TOKEN is not set", out, 1, true)
    assert.matches("hint: export OFLUA_ADMIN_TOKEN=", out, 1, true)
    assert.matches("! app      OFLUA_PUBLIC_URL is not set", out, 1, true)
    assert.matches("all checks passed", out, 1, true)
    local args = { table.unpack(skip) }
    args[#args + 1] = "--json"
    out, _, code = h.oflua(args, { env = { OFLUA_ADMIN_TOKEN = "", OFLUA_PUBLIC_URL = "" } })
    assert.equal(0, code)
    local r = cjson.decode(out)
    assert.is_true(r.ok)
    local warnings = 0
    for _, c in ipairs(r.checks) do
      if c.warning then
        warnings = warnings + 1
        assert.equal("app", c.check)
        assert.is_string(c.hint)
      end
    end
    assert.equal(2, warnings)
    local token = ("k"):rep(40)
    out, _, code = h.oflua(skip, { env = { OFLUA_ADMIN_TOKEN = token, OFLUA_PUBLIC_URL = "https://app.example" } })
    assert.equal(0, code)
    assert.matches("✓ app      admin token set; public URL https://app.example", out, 1, true)
    assert.is_nil(out:find(token, 1, true))
  end)

  it("refuses an unknown --skip name", function()
    local _, err, code = h.oflua({ "doctor", "--skip", "acces" })
    assert.equal(2, code)
    assert.matches("--skip acces: no such check", err, 1, true)
    assert.matches("Did you mean this?\n\taccess", err, 1, true)
  end)

  it("flags an endpoint that accepts forged events", function()
    local srv = assert(server.listen({ script = h.source_dir .. "/spec/fixtures/servers/hello.lua", workers = 1 }))
    local out, _, code = h.oflua({ "doctor", "--skip", "store", "--skip", "access", "--skip", "link",
      "--webhook-url", srv:url() .. "/", "--secret", SECRET }, { env = env() })
    srv:close()
    assert.equal(1, code)
    assert.matches("✗ webhook  a wrongly signed event got 200, not 4xx", out, 1, true)
  end)
end)
