-- The re-auth Link flow through the example app, end to end: the emulator
-- and `oflua serve examples/webhook_receiver.lua` run as subprocesses; a user
-- connects through /link/start; the connection expires (connection.expired
-- webhook); the app's on_reauth_required hook starts a reconnect Link and
-- notifies the user; the user opens that link in a browser that never
-- visited /link/start (no cookie) and the callback completes, because the
-- session's state travels in the redirect.
local h = require("spec.helper")
local cjson = require("cjson")
local crypto = require("oflua.crypto")
local http = require("oflua.http")
local store = require("oflua.store")

local eventually = h.eventually

-- A free loopback port for the app, known before it starts: the example app
-- builds its redirect URLs from OFLUA_PUBLIC_URL, never from Host.
local function free_port(dir)
  local server = require("oflua.server")
  local script = dir .. "/noop.lua"
  h.write_file(script, "return function() return 200, '' end\n")
  local s = assert(server.listen({ host = "127.0.0.1", port = 0, workers = 1, script = script }))
  local port = s:port()
  s:close()
  return port
end

local alive = h.alive

describe("re-auth Link through the example app", function()
  local dir, pids = nil, {}
  local api_key = "sk_test_reauth_" .. crypto.hex(crypto.random(8))
  local secret = "whsec_" .. crypto.base64(crypto.random(24))
  local admin = { authorization = "Bearer " .. crypto.hex(crypto.random(16)) }

  local function path(name) return dir .. "/" .. name end

  local function spawn(name, env, argv)
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. h.shq(v) end
    for _, a in ipairs(argv) do parts[#parts + 1] = h.shq(a) end
    local pid = tonumber((h.sh(("%s >%s 2>%s & echo $!"):format(table.concat(parts, " "),
      h.shq(path(name .. ".out")), h.shq(path(name .. ".err"))))))
    pids[name] = assert(pid)
  end

  local function call(method, url, body, extra)
    local headers = {}
    for k, v in pairs(extra or {}) do headers[k] = v end
    if type(body) == "table" then
      body = cjson.encode(body)
      headers["content-type"] = "application/json"
    end
    local r = assert(http.request({ method = method, url = url, body = body, headers = headers,
      timeout_ms = 20000 }))
    local ok, decoded = pcall(cjson.decode, r.body)
    return r.status, ok and decoded or r.body, r
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. h.shq(dir)))
  end)

  teardown(function()
    for _, pid in pairs(pids) do
      if alive(pid) then
        os.execute("kill -TERM " .. pid)
        eventually(function() return not alive(pid) end, 10)
        if alive(pid) then os.execute("kill -9 " .. pid) end
      end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  it("completes the callback of a reconnect Link started by the hook, without the /link/start cookie", function()
    local key_file = path("store.key")
    assert(store.save_key(key_file, store.keygen()))
    spawn("emulator", { OFAUTH_API_KEY = api_key, OFAUTH_WEBHOOK_SECRET = secret },
      { h.bin, "emulator", "--port", "0", "--ready-file", path("emu.url"), "--webhook-base-delay-ms", "100",
        "--webhook-url", "http://127.0.0.1:9/unset" })
    local emu = eventually(function() return h.slurp(path("emu.url")):match("http://[%d.:]+") end)
    assert(emu, "the emulator did not start: " .. h.slurp(path("emulator.err")))
    local port = free_port(dir)
    spawn("app", { OFAUTH_API_KEY = api_key, OFAUTH_BASE_URL = emu, OFAUTH_WEBHOOK_SECRET = secret,
      OFLUA_STORE = path("app.db"), OFLUA_STORE_KEY_FILE = key_file,
      OFLUA_ADMIN_TOKEN = admin.authorization:sub(8), OFLUA_PUBLIC_URL = "http://127.0.0.1:" .. port },
      { h.bin, "serve", h.source_dir .. "/examples/webhook_receiver.lua", "--port", tostring(port) })
    local app = eventually(function() return h.slurp(path("app.out")):match("listening on (http://[%d.:]+)") end)
    assert(app, "the app did not start: " .. h.slurp(path("app.err")))
    assert.equal(200, (call("PUT", emu .. "/emulator/webhook", { url = app .. "/webhooks/ofauth" })))

    -- 1. connect through /link/start (this browser has the cookie)
    local status, b, resp = call("GET", app .. "/link/start?user=amy&format=json", nil, admin)
    assert.equal(200, status, cjson.encode(b))
    assert.is_number(b.expires_at) -- unix seconds
    local cookie = (resp.headers["set-cookie"] or ""):match("^[^;]+")
    status, b = call("POST", emu .. "/emulator/link/" .. b.url:match("/link/([^/?#]+)") .. "/complete", {})
    assert.equal(200, status)
    local conn_id = b.connectionId
    assert.equal(200, (call("GET", b.redirectUrl, nil, { cookie = cookie })))
    assert.truthy(eventually(function()
      local s, u = call("GET", app .. "/users/amy", nil, admin)
      return s == 200 and u.status == "active"
    end), "connection.created was not processed")

    -- 2. the connection expires: the hook starts a reconnect Link and notifies
    assert.equal(200, (call("POST", emu .. "/emulator/connections/" .. conn_id .. "/expire")))
    local link_url = eventually(function()
      local u = h.slurp(path("app.err")):match("Reconnect: (http:[^%s\"]+)")
      return u and u:gsub("\\/", "/")
    end)
    assert(link_url, "no reconnect link was sent: " .. h.slurp(path("app.err")))

    -- 3. the user finishes it in another browser: no cookie
    status, b = call("POST", emu .. "/emulator/link/" .. link_url:match("/link/([^/?#]+)") .. "/complete", {})
    assert.equal(200, status, cjson.encode(b))
    assert.matches("oflua_state=", b.redirectUrl, 1, true)
    local cs, cb = call("GET", b.redirectUrl)
    assert.equal(200, cs, cjson.encode(cb))
    assert.equal("success", cb.status)
    assert.equal("amy", cb.user_id)
    assert.truthy(eventually(function()
      local s, u = call("GET", app .. "/users/amy", nil, admin)
      return s == 200 and u.status == "active"
    end), "connection.updated was not processed")
    -- the same redirect cannot be used twice
    assert.equal(400, (call("GET", b.redirectUrl)))
  end)
end)
