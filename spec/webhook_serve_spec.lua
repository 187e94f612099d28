-- The webhook receiver and the example app under `oflua serve`, as deployed:
--  * a receiver whose handler loops, and one whose OFAuth call hangs (an
--    emulator with a slow fault), keep acknowledging other deliveries while
--    that handler is stuck (the script only returns app:handler(): the
--    background tick comes with it);
--  * the stock examples/webhook_receiver.lua refuses its admin and data
--    routes without the admin token (and has them off when no token is
--    configured), starts a Link only for an authenticated user, and sends the
--    browser back to the configured public URL whatever the Host header says.
local h = require("spec.helper")
local cjson = require("cjson")
local http = require("oflua.http")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")

local alive = h.alive

local function eventually(pred, limit) return h.eventually(pred, limit, 0.02) end

describe("webhook receivers under oflua serve", function()
  local dir, pids = nil, {}

  -- Runs argv in the background with env; returns pid and the stdout/stderr paths.
  local function spawn(name, env, argv)
    local parts = { "env" }
    for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. h.shq(v) end
    for _, a in ipairs(argv) do parts[#parts + 1] = h.shq(a) end
    local out, err = ("%s/%s.out"):format(dir, name), ("%s/%s.err"):format(dir, name)
    local pid = h.sh(("%s >%s 2>%s & echo $!"):format(table.concat(parts, " "), h.shq(out), h.shq(err)))
    pid = assert(tonumber(pid), "no pid")
    pids[#pids + 1] = pid
    return pid, out, err
  end

  local function serve(name, script, env, json_arg)
    local argv = { h.bin, "serve", script, "-p", "0", "-w", "2" }
    if json_arg then
      argv[#argv + 1] = "--"
      argv[#argv + 1] = cjson.encode(json_arg)
    end
    local pid, out, err = spawn(name, env, argv)
    local url = eventually(function() return h.slurp(out):match("listening on (http://[%d.:]+)") end)
    assert(url, name .. " did not start: " .. h.slurp(err))
    return pid, url, err
  end

  local function emulator(env, extra)
    local ready = dir .. "/emu.url"
    os.remove(ready)
    local argv = { h.bin, "emulator", "--port", "0", "--ready-file", ready }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    spawn("emulator", env, argv)
    local url = eventually(function() return h.slurp(ready):match("http://[%d.:]+") end)
    assert(url, "the emulator did not start: " .. h.slurp(dir .. "/emulator.err"))
    return url
  end

  local function request(method, url, body, headers)
    local resp, err = http.request({ method = method, url = url, body = body, headers = headers or {},
      timeout_ms = 10000 })
    assert(resp, "request failed: " .. tostring(err and err.message))
    local ok, decoded = pcall(cjson.decode, resp.body)
    return resp.status, ok and decoded or resp.body, resp
  end

  setup(function()
    dir = h.tmpdir()
  end)

  teardown(function()
    for _, pid in ipairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  local SECRET = webhooks.new_secret()

  local function deliver(url, typ, id)
    local body = cjson.encode({ eventType = typ, data = { n = id } })
    local headers = webhooks.sign_svix(body, SECRET, id)
    headers["content-type"] = "application/json"
    return request("POST", url, body, headers)
  end

  local function marker_lines(path)
    local out = {}
    for l in h.slurp(path):gmatch("[^\n]+") do out[#out + 1] = l end
    return out
  end

  -- Sends one "stuck" delivery, waits until its handler runs, then sends 20
  -- "quick" ones: each is acknowledged while the first handler is still
  -- running (its "finished" line is not there), and none of them has run yet
  -- (the tick is busy).
  local function acks_while_stuck(url, marker)
    local s, b = deliver(url .. "/", "stuck", "msg_stuck")
    assert.equal(200, s)
    assert.equal("accepted", b.status)
    assert.truthy(eventually(function() return h.slurp(marker):find("started svix:msg_stuck", 1, true) end),
      "the stuck handler never started")
    for i = 1, 20 do
      local status, body = deliver(url .. "/", "quick", "msg_quick" .. i)
      assert.equal(200, status)
      assert.equal("accepted", body.status)
    end
    local lines = marker_lines(marker)
    assert.same({ "started svix:msg_stuck" }, lines)
  end

  -- A receiver whose "stuck" handler loops until the release file exists,
  -- with one stuck delivery and 20 quick ones acknowledged (acks_while_stuck).
  local function stuck_loop(name)
    local db, key = ("%s/%s.db"):format(dir, name), store.keygen()
    local marker, release = ("%s/%s.marker"):format(dir, name), ("%s/%s.release"):format(dir, name)
    local pid, url = serve(name, h.source_dir .. "/spec/fixtures/servers/stuck_receiver.lua", {},
      { store = db, key = key, secret = SECRET, marker = marker, mode = "loop", release = release })
    acks_while_stuck(url, marker)
    return db, key, marker, release, pid
  end

  it("keeps acknowledging while a handler loops", function()
    local db, key, marker, release, pid = stuck_loop("loop")
    -- let the loop end: the 20 waiting events are handled after it
    h.write_file(release, "")
    assert.truthy(eventually(function() return #marker_lines(marker) == 22 end),
      "not every event was handled: " .. h.slurp(marker))
    assert.equal("finished svix:msg_stuck", marker_lines(marker)[2])
    local st <close> = assert(store.open({ path = db, key = key }))
    assert.equal(21, st:inbox_stats().done)
    os.execute("kill -TERM " .. pid)
    assert.truthy(eventually(function() return not alive(pid) end), "the server did not stop")
  end)

  it("hands the events waiting for a stuck tick back to the inbox when the server stops", function()
    local db, key, _, release, pid = stuck_loop("stop")
    -- the 20 went to the tick in memory, claimed (handoff): nobody else runs them
    local st <close> = assert(store.open({ path = db, key = key }))
    local claimed = 0
    for i = 1, 20 do
      if st:inbox_get("svix:msg_quick" .. i).state == "claimed" then claimed = claimed + 1 end
    end
    assert.is_true(claimed > 0, "no event was handed to the tick")
    -- the tick cannot stop (its handler loops): at exit the waiting events
    -- are handed back (pending, due at once, no attempt counted), so the
    -- next process runs them at once instead of after their 300 s lease
    os.execute("kill -TERM " .. pid)
    assert.truthy(eventually(function() return not alive(pid) end, 30), "the server did not stop")
    for i = 1, 20 do
      local e = st:inbox_get("svix:msg_quick" .. i)
      assert.same({ "pending", 0 }, { e.state, e.attempts }, "msg_quick" .. i)
    end
    assert.equal("claimed", st:inbox_get("svix:msg_stuck").state) -- the one running when it stopped
    h.write_file(release, "")
  end)

  it("wakes its tick for each new event instead of waiting for tick_interval", function()
    -- tick_interval is an hour: past the first tick (as the server starts),
    -- only the doorbell the committer rings for each new event can run them
    local marker = dir .. "/ring.marker"
    local pid, url = serve("ring", h.source_dir .. "/spec/fixtures/servers/stuck_receiver.lua", {},
      { store = dir .. "/ring.db", key = store.keygen(), secret = SECRET, marker = marker, mode = "loop",
        release = dir .. "/ring.release", tick_interval = 3600 })
    for i = 1, 3 do
      local s, b = deliver(url .. "/", "quick", "msg_ring" .. i)
      assert.equal(200, s)
      assert.equal("accepted", b.status)
      assert.truthy(eventually(function() return h.slurp(marker):find("quick svix:msg_ring" .. i, 1, true) end, 10),
        "event " .. i .. " was not handled: " .. h.slurp(marker))
    end
    os.execute("kill -TERM " .. pid)
    assert.truthy(eventually(function() return not alive(pid) end), "the server did not stop")
  end)

  it("keeps acknowledging while a handler's OFAuth call hangs", function()
    local api_key = "sk_test_" .. require("oflua.crypto").hex(require("oflua.crypto").random(8))
    local emu = emulator({ OFAUTH_API_KEY = api_key })
    local s = request("POST", emu .. "/emulator/faults", cjson.encode({ kind = "slow", delay_ms = 60000,
      count = 10, path_prefix = "/v2/account/whoami" }), { ["content-type"] = "application/json" })
    assert.is_true(s == 200 or s == 201, tostring(s))
    local marker = dir .. "/api.marker"
    local _, url = serve("api", h.source_dir .. "/spec/fixtures/servers/stuck_receiver.lua", {},
      { store = dir .. "/api.db", key = store.keygen(), secret = SECRET, marker = marker, mode = "api",
        base_url = emu, api_key = api_key })
    acks_while_stuck(url, marker)
    -- (the call would return after 60 s; the teardown kills both processes)
  end)

  it("runs handlers inline, and says so once, when the script returned no tick", function()
    local marker = dir .. "/router.marker"
    local _, url, err = serve("router", h.source_dir .. "/spec/fixtures/servers/router_receiver.lua",
      { OFAUTH_LOG = "warn" }, { store = dir .. "/router.db", key = store.keygen(), secret = SECRET, marker = marker })
    for i = 1, 3 do
      local s, b = deliver(url .. "/webhooks/ofauth", "quick", "msg_r" .. i)
      assert.equal(200, s)
      assert.equal("accepted", b.status)
      -- inline: handled before the answer
      assert.truthy(h.slurp(marker):find("handled svix:msg_r" .. i, 1, true))
    end
    local warnings = 0
    for line in h.slurp(err):gmatch("[^\n]+") do
      if line:find('"webhook.no_tick"', 1, true) then warnings = warnings + 1 end
    end
    assert.is_true(warnings >= 1 and warnings <= 2, h.slurp(err)) -- once per worker VM that took a delivery
  end)
end)

describe("examples/webhook_receiver.lua as deployed", function()
  local dir, pids = nil, {}
  local APP = h.source_dir .. "/examples/webhook_receiver.lua"
  local PUBLIC_URL = "https://app.example.test"
  local TOKEN = "t0k3n-" .. require("oflua.crypto").hex(require("oflua.crypto").random(16))
  local api_key = "sk_test_" .. require("oflua.crypto").hex(require("oflua.crypto").random(8))
  local secret = webhooks.new_secret()
  local emu, with_token, without_token, no_public_url

  local function spawn(name, env, argv)
    local parts = { "env" }
    for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. h.shq(v) end
    for _, a in ipairs(argv) do parts[#parts + 1] = h.shq(a) end
    local out, err = ("%s/%s.out"):format(dir, name), ("%s/%s.err"):format(dir, name)
    local pid = h.sh(("%s >%s 2>%s & echo $!"):format(table.concat(parts, " "), h.shq(out), h.shq(err)))
    pids[#pids + 1] = assert(tonumber(pid), "no pid")
    return out, err
  end

  local function request(method, url, headers)
    local resp, err = http.request({ method = method, url = url, headers = headers or {}, timeout_ms = 10000 })
    assert(resp, "request failed: " .. tostring(err and err.message))
    local ok, decoded = pcall(cjson.decode, resp.body)
    return resp.status, ok and decoded or resp.body, resp
  end

  local function app(name, extra_env)
    local key_file = dir .. "/" .. name .. ".key"
    assert(store.save_key(key_file, store.keygen()))
    local env = { OFAUTH_API_KEY = api_key, OFAUTH_BASE_URL = emu, OFAUTH_WEBHOOK_SECRET = secret,
      OFLUA_STORE = dir .. "/" .. name .. ".db", OFLUA_STORE_KEY_FILE = key_file, OFAUTH_LOG = "error" }
    for k, v in pairs(extra_env) do env[k] = v end
    local out, err = spawn(name, env, { h.bin, "serve", APP, "-p", "0", "-w", "2" })
    local url = eventually(function() return h.slurp(out):match("listening on (http://[%d.:]+)") end)
    assert(url, name .. " did not start: " .. h.slurp(err))
    return url
  end

  setup(function()
    dir = h.tmpdir()
    local ready = dir .. "/emu.url"
    spawn("emulator", { OFAUTH_API_KEY = api_key, OFAUTH_WEBHOOK_SECRET = secret },
      { h.bin, "emulator", "--port", "0", "--ready-file", ready, "--webhook-url", "http://127.0.0.1:9/unset",
        "--redirect-uri", PUBLIC_URL .. "/link/callback" })
    emu = eventually(function() return h.slurp(ready):match("http://[%d.:]+") end)
    assert(emu, "the emulator did not start: " .. h.slurp(dir .. "/emulator.err"))
    with_token = app("with-token", { OFLUA_ADMIN_TOKEN = TOKEN, OFLUA_PUBLIC_URL = PUBLIC_URL })
    without_token = app("without-token", {})
    no_public_url = app("no-public-url", { OFLUA_ADMIN_TOKEN = TOKEN })
  end)

  teardown(function()
    for _, pid in ipairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  local ADMIN_ROUTES = { "/status", "/", "/users/alice", "/users/alice/profile", "/users/alice/subscribers" }

  it("has its admin and data routes off when no admin token is configured", function()
    for _, path in ipairs(ADMIN_ROUTES) do
      assert.equal(404, (request("GET", without_token .. path)), path)
      assert.equal(404, (request("GET", without_token .. path, { authorization = "Bearer " })), path)
    end
    -- no Link without an authenticated user (and none with no public URL)
    assert.equal(401, (request("GET", without_token .. "/link/start?user=alice&format=json")))
  end)

  it("refuses its admin and data routes without the token and serves them with it", function()
    for _, path in ipairs(ADMIN_ROUTES) do
      local s, _, resp = request("GET", with_token .. path)
      assert.equal(401, s, path)
      assert.matches("^Bearer", resp.headers["www-authenticate"])
      assert.equal(401, (request("GET", with_token .. path, { authorization = "Bearer " .. TOKEN .. "x" })), path)
      assert.equal(401, (request("GET", with_token .. path, { authorization = "Bearer " .. TOKEN:sub(1, -2) })))
      assert.equal(401, (request("GET", with_token .. path, { authorization = "Basic " .. TOKEN })), path)
    end
    local auth = { authorization = "Bearer " .. TOKEN }
    local s, body = request("GET", with_token .. "/status", auth)
    assert.equal(200, s)
    assert.same({}, body.users)
    assert.is_table(body.webhooks)
    assert.is_table(body.inbox)
    s, body = request("GET", with_token .. "/", auth)
    assert.equal(200, s)
    assert.matches("Connected accounts", body, 1, true)
    assert.equal(404, (request("GET", with_token .. "/users/alice", auth))) -- served: an unknown user
  end)

  it("starts a Link only for an authenticated user, back to the configured URL whatever the Host", function()
    local s, body = request("GET", with_token .. "/link/start?user=alice&format=json")
    assert.equal(401, s)
    assert.equal("authentication required", body.error)
    -- an operator holding the token (the default authenticate), with a hostile Host header
    local hostile = { authorization = "Bearer " .. TOKEN, host = "evil.example" }
    local _, resp
    s, body, resp = request("GET", with_token .. "/link/start?user=alice&format=json", hostile)
    assert.equal(200, s, cjson.encode(body))
    assert.matches("^ofauth_link=", resp.headers["set-cookie"])
    local session = body.url:match("/link/([^/?#]+)")
    local r = assert(http.request({ method = "POST", url = emu .. "/emulator/link/" .. session .. "/complete",
      body = cjson.encode({ outcome = "success" }), headers = { ["content-type"] = "application/json" } }))
    assert.equal(200, r.status, r.body)
    local done = cjson.decode(r.body)
    assert.equal(PUBLIC_URL .. "/link/callback", done.redirectUrl:match("^[^?]+"))
    assert.is_nil(done.redirectUrl:find("evil", 1, true))
    -- the 302 flavour points at OFAuth's Link page, not at anything from Host
    s, _, resp = request("GET", with_token .. "/link/start?user=alice", hostile)
    assert.equal(302, s)
    assert.equal(emu, resp.headers.location:match("^http://[%d.:]+"))
    -- no public URL configured: refused rather than guessed from the request
    s, body = request("GET", no_public_url .. "/link/start?user=alice&format=json", hostile)
    assert.equal(503, s)
    assert.matches("OFLUA_PUBLIC_URL", body.error)
  end)
end)
