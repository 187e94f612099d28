-- The example scripts in examples/, run as a user runs them (`oflua
-- examples/X.lua args`, configured by environment variables) against the
-- OFAuth emulator started in this process on an ephemeral loopback port.
local cjson = require("cjson")
local h = require("spec.helper")
local http = require("oflua.http")
local crypto = require("oflua.crypto")

local KEY = "sk_test_examples_key"
local SUBSCRIBERS = 250

local have_emulator = pcall(require, "ofauth.emulator")
local describe_emu = have_emulator and describe or function(name)
  describe(name, function() pending("needs ofauth.emulator on this branch") end)
end

local function call(emu, method, path, body, key)
  local headers = { ["content-type"] = "application/json" }
  if key ~= false then headers.apikey = key or KEY end
  local res = assert(http.request({ method = method, url = emu:url() .. path, headers = headers,
    body = body and cjson.encode(body) or nil, timeout_ms = 10000 }))
  local ok, decoded = pcall(cjson.decode, res.body)
  return res.status, ok and decoded or res.body, res
end

-- Make a connection the way Link does: link/init, then the emulator's
-- headless "complete". Returns the connection id.
local function connect(emu, user)
  local st, res = call(emu, "POST", "/v2/link/init", { redirectUrl = "http://127.0.0.1:9/cb",
    clientReferenceId = user })
  assert(st == 200, cjson.encode(res))
  local session = res.url:match("/link/([%w_]+)$")
  local st2, done = call(emu, "POST", "/emulator/link/" .. session .. "/complete", { outcome = "success" }, false)
  assert(st2 == 200, cjson.encode(done))
  return done.connectionId
end

local function add_fault(emu, fault)
  local st, res = call(emu, "POST", "/emulator/faults", fault, false)
  assert(st == 200 or st == 201, cjson.encode(res))
end

local function clear_faults(emu) call(emu, "DELETE", "/emulator/faults", nil, false) end

local function lines(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

describe_emu("examples against the emulator", function()
  local emu, env

  setup(function()
    emu = assert(require("ofauth.emulator").start({ api_keys = { KEY }, subscribers = SUBSCRIBERS }))
    env = { OFAUTH_API_KEY = KEY, OFAUTH_BASE_URL = emu:url(), OFAUTH_LOG = "off" }
  end)

  teardown(function()
    if emu then emu:stop() end
  end)

  after_each(function() clear_faults(emu) end)

  local function run(script, args, extra_env)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    for k, v in pairs(extra_env or {}) do e[k] = v end
    local argv = { "examples/" .. script }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    return h.oflua(argv, { env = e })
  end

  describe("whoami.lua", function()
    it("shows the account and the environment of the key", function()
      local out, err, code = run("whoami.lua")
      assert.equal(0, code, err)
      assert.matches("account: +OFAuth emulator %(sandbox%)", out)
      assert.matches("environment: sandbox", out, 1, true)
      assert.matches("permissions: profile, ", out, 1, true)
    end)

    it("prints the answer as JSON with --json", function()
      local out, err, code = run("whoami.lua", { "--json" })
      assert.equal(0, code, err)
      local me = cjson.decode(out)
      assert.equal("sandbox", me.environment)
      assert.is_string(me.id)
    end)

    it("fails with a hint, and without the key, when the key is refused", function()
      local bad = "sk_test_refused_" .. crypto.hex(crypto.random(8))
      local out, err, code = run("whoami.lua", {}, { OFAUTH_API_KEY = bad })
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("status 401", err, 1, true)
      assert.matches("hint: the key was refused", err, 1, true)
      assert.not_matches(bad, err, 1, true)
    end)

    it("says what to set when there is no key", function()
      local _, err, code = run("whoami.lua", {}, { OFAUTH_API_KEY = "" })
      assert.equal(1, code)
      assert.matches("OFAUTH_API_KEY", err, 1, true)
    end)
  end)

  describe("custom_policy.lua", function()
    it("shows the per-client table and the global default override side by side", function()
      local out, err, code = run("custom_policy.lua")
      assert.equal(0, code, err)
      assert.matches("[custom] max_attempts=6 base_delay=0.05s jitter=none", out, 1, true)
      assert.matches("[default] max_attempts=3 base_delay=0.1s jitter=full max_total_delay=5s", out, 1, true)
      assert.matches("[custom] whoami ok after 1 attempt(s)", out, 1, true)
      assert.matches("[default] whoami ok after 1 attempt(s)", out, 1, true)
      assert.not_matches("retry after", out, 1, true)
    end)

    it("retries 5xx with its own backoff and prints each retry from on_retry", function()
      add_fault(emu, { kind = "server_error", count = 3, status = 503 })
      local out, err, code = run("custom_policy.lua")
      assert.equal(0, code, err)
      local retries = {}
      for l in out:gmatch("[^\n]+") do
        if l:find("[custom] retry after", 1, true) then retries[#retries + 1] = l end
      end
      assert.same({
        "[custom] retry after attempt 1: retryable 503, waiting 0.05 s (GET /v2/account/whoami)",
        "[custom] retry after attempt 2: retryable 503, waiting 0.10 s (GET /v2/account/whoami)",
        "[custom] retry after attempt 3: retryable 503, waiting 0.20 s (GET /v2/account/whoami)",
      }, retries)
      assert.matches("[custom] whoami ok after 4 attempt(s)", out, 1, true)
      assert.matches("[default] whoami ok after 1 attempt(s)", out, 1, true)
    end)

    it("takes its figures from the command line; each client gives up at its own limit", function()
      add_fault(emu, { kind = "rate_limit", count = 5, retry_after = 0 })
      local out, _, code = run("custom_policy.lua", { "--max-attempts", "2" })
      assert.equal(1, code)
      assert.matches("[custom] max_attempts=2", out, 1, true)
      assert.matches("[custom] retry after attempt 1: rate_limited 429", out, 1, true)
      assert.matches("[custom] failed: ofauth rate_limited error (GET /v2/account/whoami) status 429 "
        .. "RATE_LIMIT_EXCEEDED", out, 1, true)
      assert.matches("(after 2 attempts)", out, 1, true)
      -- the global override (max_attempts = 3) applies to the other client
      assert.matches("[default] retry after attempt 2: rate_limited 429", out, 1, true)
      assert.matches("%[default%] failed: .*%(after 3 attempts%)", out)
    end)

    it("replaces the SESSION_EXPIRED reaction for the custom client only", function()
      local conn = connect(emu, "policy-user")
      add_fault(emu, { kind = "session_expired", count = 1, path_prefix = "/v2/access/self" })
      local out, _, code = run("custom_policy.lua", { "--connection", conn })
      assert.equal(1, code)
      assert.matches("[custom] session expired on GET /v2/access/self: ask the user to reconnect", out, 1, true)
      assert.matches("[custom] self: reauth_required", out, 1, true)
      assert.matches("[default] self: ok", out, 1, true)
      assert.not_matches("[default] session expired", out, 1, true)
    end)

    it("rejects a bad option with a usage message", function()
      local _, err, code = run("custom_policy.lua", { "--max-attempts", "many" })
      assert.equal(2, code)
      assert.matches("--max-attempts needs a non-negative number", err, 1, true)
    end)
  end)

  describe("earnings_report.lua", function()
    it("sums every transaction (marker pagination) by type, and counts chargebacks", function()
      local conn = connect(emu, "earnings-user")
      local out, err, code = run("earnings_report.lua", { "--since", "2026-01-01", "--json" },
        { OFAUTH_CONNECTION_ID = conn })
      assert.equal(0, code, err)
      local r = cjson.decode(out)
      assert.equal(require("ofauth.emulator.generic").ITEMS, r.transactions)
      assert.is_true(r.pages > 1)
      assert.equal(require("ofauth.emulator.generic").ITEMS, r.chargebacks)
      out, err, code = run("earnings_report.lua", {}, { OFAUTH_CONNECTION_ID = conn })
      assert.equal(0, code, err)
      assert.matches("25 transactions in 3 pages", out, 1, true)
      local _
      _, err, code = run("earnings_report.lua", { "--since", "yesterday" }, { OFAUTH_CONNECTION_ID = conn })
      assert.equal(2, code)
      assert.matches("bad argument", err, 1, true)
    end)
  end)

  describe("export_subscribers.lua", function()
    local conn

    setup(function() conn = connect(emu, "export-user") end)

    it("streams every subscriber of a connection to CSV on stdout, no progress when piped", function()
      local out, err, code = run("export_subscribers.lua", {}, { OFAUTH_CONNECTION_ID = conn })
      assert.equal(0, code, err)
      assert.equal("", err)
      local rows = lines(out)
      assert.equal(SUBSCRIBERS + 1, #rows)
      assert.equal("id,username,name,status,subscribedAt,expiresAt", rows[1])
      assert.matches("^%d+,fan_1,Fan 1,active,2024%-01%-01T01:00:00Z,", rows[2])
      assert.matches(",fan_250,Fan 250,", rows[#rows], 1, true)
      assert.not_matches(conn, out .. err, 1, true)
    end)

    it("filters by type, pages by --page-size and picks --columns", function()
      local out, err, code = run("export_subscribers.lua", { "--connection", conn, "--type", "expired",
        "--page-size", "7", "--columns", "username,status" })
      assert.equal(0, code, err)
      local rows = lines(out)
      assert.equal("username,status", rows[1])
      assert.equal(SUBSCRIBERS // 4 + 1, #rows)
      for i = 2, #rows do assert.matches("^fan_%d+,expired$", rows[i]) end
    end)

    it("draws a progress bar on a terminal and writes the file with --out", function()
      local ok_script = select(3, h.sh("command -v script")) == 0
      if not ok_script then
        pending("needs script(1) from util-linux for a pseudo-terminal")
        return
      end
      local file = os.tmpname()
      -- script(1) gives the command a pseudo-terminal on stdin, stdout and stderr.
      local cmd = ("script -qec %s /dev/null"):format(h.shq(("%s examples/export_subscribers.lua --out %s")
        :format(h.shq(h.bin), h.shq(file))))
      local out, err, code = h.sh(cmd, { env = { OFAUTH_API_KEY = KEY, OFAUTH_BASE_URL = emu:url(),
        OFAUTH_LOG = "off", OFAUTH_CONNECTION_ID = conn } })
      local csv = h.slurp(file)
      os.remove(file)
      assert.equal(0, code, err)
      -- the bar knows the total from the profile's subscribersCount
      assert.matches("%[#+%] 100%%  250/250", out)
      assert.matches("wrote 250 subscribers to", out, 1, true)
      assert.equal(SUBSCRIBERS + 1, #lines(csv))
      assert.not_matches("\r", csv, 1, true)
    end)

    it("says what is missing without a connection", function()
      local _, err, code = run("export_subscribers.lua")
      assert.equal(2, code)
      assert.matches("give --connection, --user or OFAUTH_CONNECTION_ID", err, 1, true)
    end)

    it("stops with the reason when the session expired, keeping the header", function()
      add_fault(emu, { kind = "session_expired", count = 1 })
      local out, err, code = run("export_subscribers.lua", {}, { OFAUTH_CONNECTION_ID = conn })
      assert.equal(1, code)
      assert.equal("id,username,name,status,subscribedAt,expiresAt\n", out)
      assert.matches("stopped after 0 rows: ofauth reauth_required error", err, 1, true)
      assert.matches("the user must reconnect through Link", err, 1, true)
      assert.not_matches(conn, err, 1, true)
    end)
  end)

  describe("link_flow.lua", function()
    -- Runs the example in the background; returns an object to read its
    -- output line by line, and its exit status at the end.
    local function start(args, extra_env)
      local e = {}
      for k, v in pairs(env) do e[k] = v end
      for k, v in pairs(extra_env or {}) do e[k] = v end
      local prefix = ""
      for k, v in pairs(e) do prefix = prefix .. k .. "=" .. h.shq(v) .. " " end
      local errfile = os.tmpname()
      local parts = { h.shq(h.bin), "examples/link_flow.lua" }
      for _, a in ipairs(args) do parts[#parts + 1] = h.shq(a) end
      local p = assert(io.popen(("%s%s 2>%s </dev/null"):format(prefix, table.concat(parts, " "),
        h.shq(errfile)), "r"))
      local proc = { out = {} }
      function proc.line()
        local l = p:read("l")
        if l then proc.out[#proc.out + 1] = l end
        return l
      end
      function proc.finish()
        local rest = p:read("a")
        local _, _, code = p:close()
        local err = h.slurp(errfile)
        os.remove(errfile)
        return table.concat(proc.out, "\n") .. "\n" .. rest, err, code
      end
      -- the URL line, once the callback server listens and Link started
      repeat
        local l = proc.line()
        if l and l:match("^  http") then
          proc.link_url = l:match("^  (%S+)")
          break
        end
      until l == nil
      for _, l in ipairs(proc.out) do
        proc.callback = proc.callback or l:match("callback on (http://%S+/callback)")
      end
      return proc
    end

    local function complete(proc, outcome)
      assert(proc.link_url, "the example printed no Link URL")
      local session = proc.link_url:match("/link/([%w_]+)$")
      local st, res = call(emu, "POST", "/emulator/link/" .. session .. "/complete", { outcome = outcome }, false)
      assert.equal(200, st)
      return res.redirectUrl
    end

    it("prints the Link URL, refuses a forged callback, handles the real one", function()
      local proc = start({ "user-7", "--port", "0", "--timeout", "60" })
      assert.is_string(proc.link_url)
      assert.matches("^" .. emu:url():gsub("%p", "%%%0") .. "/link/", proc.link_url)
      -- a callback for a session this process never started
      local forged = assert(http.request({ url = proc.callback .. "?status=success&client_reference_id=mallory"
        .. "&connection_id=conn_forged1234" }))
      assert.equal(400, forged.status)
      assert.matches("unknown_session", forged.body, 1, true)
      -- the browser coming back from OFAuth
      local back = assert(http.request({ url = complete(proc, "success") }))
      assert.equal(200, back.status)
      assert.matches("Account connected", back.body, 1, true)
      local out, err, code = proc.finish()
      assert.equal(0, code, err)
      assert.matches("(memory store)", out, 1, true)
      assert.matches("(1 callback(s) that did not match this session were refused)", out, 1, true)
      assert.matches("Link succeeded for user user%-7: connection conn_…%w%w%w%w%.", out)
      assert.not_matches("conn_[%w]+[%w][%w][%w][%w][%w]", out) -- never the whole id
    end)

    it("reports a cancelled Link and exits 1; pending sessions can live in the encrypted store", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -m 700 " .. h.shq(dir)))
      local store_env = { OFLUA_STORE = dir .. "/app.db", OFLUA_STORE_KEY = require("oflua.store").keygen() }
      local proc = start({ "user-8", "--port", "0", "--timeout", "60" }, store_env)
      local back = assert(http.request({ url = complete(proc, "cancelled") }))
      assert.equal(200, back.status)
      local out, err, code = proc.finish()
      os.execute("rm -rf " .. h.shq(dir))
      assert.equal(1, code, err)
      assert.matches("(file store)", out, 1, true)
      assert.matches("Link ended with status cancelled for user user-8 at step login.", out, 1, true)
    end)

    it("explains a redirect URL that is not registered", function()
      local proc = start({ "user-9", "--port", "0", "--redirect-url", "https://app.example.com/not-registered" })
      local _, err, code = proc.finish()
      assert.equal(1, code)
      assert.matches("redirectUrl is not a registered redirect URI", err, 1, true)
      assert.matches("hint: register https://app.example.com/not-registered as a redirect URI", err, 1, true)
    end)
  end)
end)

-- A stand-in API for what the emulator cannot be told to do: fail on the
-- third page only. Served by oflua.server from a script written here.
describe("export_subscribers.lua when a later page fails", function()
  local srv, script

  setup(function()
    script = h.write_file(os.tmpname(), [[
      local cjson = require("cjson")
      return function(req)
        local offset = tonumber(req.query.offset) or 0
        if req.path ~= "/v2/access/subscribers" then return 404, "{}" end
        if offset >= 200 then
          return 403, cjson.encode({ error = "not allowed", code = "FORBIDDEN" }),
            { ["content-type"] = "application/json" }
        end
        local list = {}
        for i = offset + 1, offset + 100 do
          list[#list + 1] = { id = i, username = "u" .. i, name = 'Name, "quoted" ' .. i, status = "active" }
        end
        return 200, cjson.encode({ list = list, hasMore = true, nextOffset = offset + 100 }),
          { ["content-type"] = "application/json" }
      end
    ]])
    srv = assert(require("oflua.server").listen({ port = 0, workers = 1, script = script }))
  end)

  teardown(function()
    if srv then
      srv:stop()
      srv:close()
    end
    os.remove(script)
  end)

  it("keeps the rows already written, quoted per RFC 4180, and says how many", function()
    local out, err, code = h.oflua({ "examples/export_subscribers.lua", "--page-size", "100" }, { env = {
      OFAUTH_API_KEY = KEY, OFAUTH_BASE_URL = srv:url(), OFAUTH_CONNECTION_ID = "conn_standin1234",
      OFAUTH_LOG = "off" } })
    assert.equal(1, code)
    local rows = lines(out)
    assert.equal(201, #rows)
    assert.equal('1,u1,"Name, ""quoted"" 1",active,,', rows[2])
    assert.matches("stopped after 200 rows: ofauth api error (GET /v2/access/subscribers) status 403 FORBIDDEN",
      err, 1, true)
  end)
end)
