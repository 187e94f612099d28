-- Secrets stay secret through a whole flow. The emulator (`oflua emulator`)
-- and the example app (`oflua serve examples/webhook_receiver.lua`, debug
-- logging) run as subprocesses with fresh secrets; Link, the signed
-- connection.created webhook, the encrypted store, Access API calls, forged
-- webhooks, a SESSION_EXPIRED, CLI commands (ofauth, doctor) and an
-- in-process client with its log lines and error messages all happen. Then
-- everything they wrote (stdout, stderr, logs, error texts) and the store
-- file's bytes are searched for the API key, the webhook secret (whole, its
-- base64 part and the key bytes), the store master key (base64 and raw) and
-- the connection id. The demo's output (scripts/lib/demo.lua) is scanned too.
local h = require("spec.helper")
local cjson = require("cjson")
local crypto = require("oflua.crypto")
local http = require("oflua.http")
local store = require("oflua.store")
local log = require("ofauth.log")

local eventually = h.eventually

local alive = h.alive

-- Where a secret shows up in `texts` ({name = text}): "name" or nil.
local function find_secret(texts, secrets)
  for name, text in pairs(texts) do
    for sname, s in pairs(secrets) do
      if #s >= 8 and text:find(s, 1, true) then return ("%s found in %s"):format(sname, name) end
    end
  end
end

describe("secrets through a full flow", function()
  local dir, pids = nil, {}
  local api_key = "sk_test_secrets_" .. crypto.hex(crypto.random(12))
  local secret = "whsec_" .. crypto.base64(crypto.random(24))
  local store_key = store.keygen()
  local texts = {} -- name -> everything captured

  local function path(name) return dir .. "/" .. name end

  local function spawn(name, env, argv)
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. h.shq(v) end
    for _, a in ipairs(argv) do parts[#parts + 1] = h.shq(a) end
    local pid = tonumber((h.sh(("%s >%s 2>%s & echo $!"):format(table.concat(parts, " "),
      h.shq(path(name .. ".out")), h.shq(path(name .. ".err"))))))
    pids[name] = assert(pid)
    return pid
  end

  local function stop(name)
    local pid = pids[name]
    if pid and alive(pid) then
      os.execute("kill -TERM " .. pid)
      assert.truthy(eventually(function() return not alive(pid) end, 15), name .. " did not stop")
    end
    texts[name .. " stdout"] = h.slurp(path(name .. ".out"))
    texts[name .. " stderr"] = h.slurp(path(name .. ".err"))
  end

  -- the example app's admin token; its public URL, mapped to its local
  -- address as a reverse proxy would
  local ADMIN_TOKEN = require("oflua.crypto").hex(require("oflua.crypto").random(16))
  local PUBLIC_URL = "https://app.example.test"
  local app_url
  local function call(method, url, body, extra)
    local headers = {}
    if app_url and url:sub(1, #PUBLIC_URL) == PUBLIC_URL then url = app_url .. url:sub(#PUBLIC_URL + 1) end
    if app_url and url:sub(1, #app_url) == app_url then headers.authorization = "Bearer " .. ADMIN_TOKEN end
    for k, v in pairs(extra or {}) do headers[k] = v end
    if type(body) == "table" then
      body = cjson.encode(body)
      headers["content-type"] = "application/json"
    end
    local r = assert(http.request({ method = method, url = url, body = body, headers = headers,
      timeout_ms = 20000 }))
    local ok, decoded = pcall(cjson.decode, r.body)
    -- the app's answers are scanned; the emulator's control API hands the
    -- test its connection ids on purpose
    if not url:find("/emulator/", 1, true) then texts[("response %s %s"):format(method, url)] = r.body end
    return r.status, ok and decoded or r.body, r
  end

  local function cli(name, env, argv)
    local args = {}
    for _, a in ipairs(argv) do args[#args + 1] = h.shq(a) end
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. h.shq(v) end
    local out, err, code = h.sh(table.concat(parts, " ") .. " " .. h.shq(h.bin) .. " " .. table.concat(args, " "))
    texts["cli " .. name .. " stdout"] = out
    texts["cli " .. name .. " stderr"] = err
    return out, err, code
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. h.shq(dir)))
  end)

  teardown(function()
    for _, pid in pairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  it("never writes a key, a secret or a connection id in clear", function()
    local key_file = path("store.key")
    assert(store.save_key(key_file, store_key))
    local db = path("app.db")

    -- the emulator and the app
    spawn("emulator", { OFAUTH_API_KEY = api_key, OFAUTH_WEBHOOK_SECRET = secret },
      -- (the app's address is set with PUT /emulator/webhook once it runs)
      { h.bin, "emulator", "--port", "0", "--ready-file", path("emu.url"), "--webhook-base-delay-ms", "100",
        "--webhook-url", "http://127.0.0.1:9/unset", "--redirect-uri", PUBLIC_URL .. "/link/callback",
        "--subscribers", "250" })
    local emu = eventually(function() return h.slurp(path("emu.url")):match("http://[%d.:]+") end)
    assert(emu, "the emulator did not start: " .. h.slurp(path("emulator.err")))
    local env = { OFAUTH_API_KEY = api_key, OFAUTH_BASE_URL = emu, OFAUTH_WEBHOOK_SECRET = secret,
      OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = key_file, OFAUTH_LOG = "debug",
      OFLUA_ADMIN_TOKEN = ADMIN_TOKEN, OFLUA_PUBLIC_URL = PUBLIC_URL }
    spawn("app", env, { h.bin, "serve", h.source_dir .. "/examples/webhook_receiver.lua", "--port", "0" })
    local app = eventually(function() return h.slurp(path("app.out")):match("listening on (http://[%d.:]+)") end)
    assert(app, "the app did not start: " .. h.slurp(path("app.err")))
    app_url = app
    assert.equal(200, (call("PUT", emu .. "/emulator/webhook", { url = app .. "/webhooks/ofauth" })))

    -- Link, the callback, connection.created into the store
    local status, b, resp = call("GET", app .. "/link/start?user=bob&format=json")
    assert.equal(200, status, cjson.encode(b))
    local cookie = (resp.headers["set-cookie"] or ""):match("^[^;]+") -- the browser's session cookie
    local session = b.url:match("/link/([^/?#]+)")
    status, b = call("POST", emu .. "/emulator/link/" .. session .. "/complete", { outcome = "success" })
    assert.equal(200, status)
    local conn_id = b.connectionId
    assert.matches("^conn_", conn_id)
    assert.equal(200, (call("GET", b.redirectUrl, nil, { cookie = cookie })))
    assert.truthy(eventually(function()
      local s, u = call("GET", app .. "/users/bob")
      return s == 200 and u.status == "active"
    end), "connection.created was not processed")

    -- Access API calls, forged webhooks, a rate limit, SESSION_EXPIRED
    assert.equal(200, (call("GET", app .. "/users/bob/profile")))
    status, b = call("GET", app .. "/users/bob/subscribers?limit=100")
    assert.equal(200, status)
    assert.equal(250, b.subscribers)
    local webhooks = require("ofauth.webhooks")
    local body = cjson.encode({ eventType = "connection.updated", data = { clientReferenceId = "bob",
      connection = { id = conn_id, status = "active" } } })
    local forged = webhooks.sign_svix(body, webhooks.new_secret())
    local r = assert(http.request({ method = "POST", url = app .. "/webhooks/ofauth", body = body, headers = forged }))
    assert.equal(401, r.status)
    r = assert(http.request({ method = "POST", url = app .. "/webhooks/ofauth", body = body .. "x",
      headers = webhooks.sign_svix(body, secret) }))
    assert.equal(401, r.status)
    call("POST", emu .. "/emulator/faults", { kind = "rate_limit", count = 1, retry_after = 0,
      path_prefix = "/v2/access/self" })
    assert.equal(200, (call("GET", app .. "/users/bob/profile")))
    call("POST", emu .. "/emulator/faults", { kind = "session_expired", connection_id = conn_id })
    status, b = call("GET", app .. "/users/bob/profile")
    assert.equal(409, status)
    assert.equal("reauth_required", b.error)

    -- an in-process client: its log lines and every error's text
    local lines = {}
    local sink = log.sink
    log.sink = function(line) lines[#lines + 1] = line end
    local ok, err = pcall(function()
      local client = assert(require("ofauth.client").new({ api_key = api_key, base_url = emu,
        policy = { base_delay = 0.01, max_total_delay = 0.2 } }))
      local errs = {}
      call("POST", emu .. "/emulator/faults", { kind = "session_expired", connection_id = conn_id, count = 2 })
      local _, e1 = client:access(conn_id):self()
      errs[#errs + 1] = e1
      local pok, e2 = pcall(function() for _ in client:access(conn_id):subscribers() do end end)
      assert.is_false(pok)
      errs[#errs + 1] = e2
      call("POST", emu .. "/emulator/faults", { kind = "server_error", count = 10, path_prefix = "/v2/access/" })
      local _, e3 = client:access(conn_id):request("POST", "/posts", { body = { text = "hi" } })
      errs[#errs + 1] = e3
      call("DELETE", emu .. "/emulator/faults")
      local _, e4 = client:connection("conn_doesnotexist_" .. conn_id:sub(6))
      errs[#errs + 1] = e4
      local bad = assert(require("ofauth.client").new({ api_key = api_key .. "x", base_url = emu }))
      local _, e5 = bad:whoami()
      errs[#errs + 1] = e5
      local _, e6 = store.open({ path = db, key = store.keygen() })
      errs[#errs + 1] = e6
      for i, e in ipairs(errs) do
        assert.truthy(e, "error " .. i .. " expected")
        texts["error " .. i] = tostring(e)
        if type(e) == "table" then texts["error " .. i .. " fields"] = cjson.encode(e) end
      end
    end)
    log.sink = sink
    assert(ok, err)
    texts["in-process log"] = table.concat(lines, "\n")

    -- operators' commands
    cli("whoami", env, { "ofauth", "whoami" })
    cli("connections", env, { "ofauth", "connections" })
    cli("connections-csv", env, { "ofauth", "connections", "--format", "csv" })
    cli("subscribers", env, { "ofauth", "subscribers", "--user", "bob", "--max", "5", "--format", "csv" })
    cli("doctor", env, { "doctor", "--user", "bob" })
    cli("whoami-bad-key", { OFAUTH_API_KEY = api_key .. "y", OFAUTH_BASE_URL = emu }, { "ofauth", "whoami" })

    stop("app")
    stop("emulator")

    -- the scan
    local secrets = {
      ["API key"] = api_key, ["webhook secret"] = secret, ["webhook secret (base64 part)"] = secret:sub(7),
      ["webhook key bytes"] = crypto.unbase64(secret:sub(7)), ["store key"] = store_key,
      ["store key bytes"] = crypto.unbase64(store_key), ["connection id"] = conn_id,
      ["connection id (without prefix)"] = conn_id:sub(6), ["admin token"] = ADMIN_TOKEN,
    }
    local captured = 0
    for _, t in pairs(texts) do captured = captured + #t end
    assert.is_nil(find_secret(texts, secrets))
    local files = { db = h.slurp(db), wal = h.slurp(db .. "-wal"), shm = h.slurp(db .. "-shm") }
    assert.is_true(#files.db > 0)
    local found = find_secret(files, secrets)
    assert.is_nil(found)
    for name, bytes in pairs(files) do
      assert.is_nil(bytes:find("bob", 1, true), "the user id in clear in the store's " .. name)
    end
    -- sanity: the scan sees real output (the flow's log lines are there)
    assert.matches("webhook.accepted", texts["app stderr"] .. texts["app stdout"])
    print(("\nsecrets: %d bytes of output scanned, store file %d bytes"):format(captured, #files.db))
  end)


  it("keeps them out of the demo's output too", function()
    local demo = h.source_dir .. "/scripts/lib/demo.lua"
    if not io.open(demo) then
      pending("scripts/lib/demo.lua is not there")
      return
    end
    local out, err, code = h.oflua({ demo }, { env = { OFLUA_DEMO_KEEP = "1" } })
    local tmp = out:match("state in (/tmp/oflua%-demo%.[%w]+)")
    finally(function()
      if tmp then os.execute("rm -rf " .. h.shq(tmp)) end
    end)
    assert.equal(0, code, out .. err)
    assert.truthy(tmp, "the demo did not name its state directory")
    local store_key_demo = h.slurp(tmp .. "/store.key"):match("%S+")
    assert.truthy(store_key_demo)
    local t = { stdout = out, stderr = err, ["app.log"] = h.slurp(tmp .. "/app.log"),
      ["doctor.out"] = h.slurp(tmp .. "/doctor.out") }
    assert.is_nil(find_secret(t, { ["store key"] = store_key_demo,
      ["store key bytes"] = crypto.unbase64(store_key_demo) }))
    -- the API key and webhook secret are made inside the demo: look for their shapes
    for name, text in pairs(t) do
      assert.is_nil(text:match("sk_test_demo_%x+"), "an API key in the demo's " .. name)
      assert.is_nil(text:match("whsec_[%w+/=]+"), "a webhook secret in the demo's " .. name)
      assert.is_nil(text:match("conn_[%w%-_]+"), "a connection id in the demo's " .. name)
    end
    local db = h.slurp(tmp .. "/app.db") .. h.slurp(tmp .. "/app.db-wal")
    assert.is_nil(db:find("conn_", 1, true), "a connection id in clear in the demo's store")
  end)
end)
