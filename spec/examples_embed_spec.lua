-- examples/embed: a C service with its own HTTP loop, built against an
-- installed oflua with pkg-config (like a user would: `cmake --install` into a
-- fresh prefix, then the example's Makefile), run with signed webhook
-- deliveries. In the sanitizer build the service is built with the same
-- -fsanitize flags and must exit cleanly (no leak, no UB) on SIGTERM.
local cjson = require("cjson")
local h = require("spec.helper")
local http = require("oflua.http")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")

local build_dir = os.getenv("OFLUA_BUILD_DIR") or "build"

local function sanitized()
  return h.slurp(build_dir .. "/CMakeCache.txt"):find("OFLUA_SANITIZE:BOOL=ON", 1, true) ~= nil
end

local function have(cmd) return select(3, h.sh("command -v " .. cmd)) == 0 end

local ready = have("cmake") and have("make") and have("pkg-config") and have("cc")
  and h.slurp(build_dir .. "/CMakeCache.txt") ~= ""
local describe_embed = ready and describe or function(name)
  describe(name, function() pending("needs cmake, make, pkg-config, cc and a build directory") end)
end

describe_embed("examples/embed (C service over oflua_handle_http)", function()
  local tmp, service, env

  setup(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -m 700 " .. h.shq(tmp)))
    local prefix = tmp .. "/prefix"
    local _, err, code = h.sh(("cmake --install %s --prefix %s"):format(h.shq(build_dir), h.shq(prefix)))
    assert(code == 0, err)
    -- The example's own Makefile, in a copy of its directory.
    local src = tmp .. "/embed"
    assert(os.execute(("cp -r examples/embed %s"):format(h.shq(src))))
    local pcdir = h.sh(("dirname \"$(find %s -name oflua.pc | head -1)\""):format(h.shq(prefix))):gsub("%s+$", "")
    local flags = "-O1 -g -Werror"
    local ldflags = ""
    if sanitized() then
      flags = flags .. " -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
      ldflags = "-fsanitize=address,undefined"
    end
    local out
    out, err, code = h.sh(("make -C %s CFLAGS=%s LDFLAGS=%s"):format(h.shq(src), h.shq(flags), h.shq(ldflags)),
      { env = { PKG_CONFIG_PATH = pcdir } })
    assert(code == 0, out .. err)
    service = src .. "/service"
    env = {
      OFAUTH_WEBHOOK_SECRET = webhooks.new_secret(),
      OFLUA_STORE = tmp .. "/inbox.db",
      OFLUA_STORE_KEY = store.keygen(),
    }
  end)

  teardown(function()
    if tmp then os.execute("rm -rf " .. h.shq(tmp)) end
  end)

  -- Start the service; returns its base URL, pid and a finish() giving its
  -- exit code and stderr after SIGTERM.
  local function start(extra)
    local prefix = ""
    for k, v in pairs(env) do prefix = prefix .. k .. "=" .. h.shq(v) .. " " end
    for k, v in pairs(extra or {}) do prefix = prefix .. k .. "=" .. h.shq(v) .. " " end
    local errfile = tmp .. "/service.err"
    -- --handler by path: the service runs from anywhere
    local p = assert(io.popen(("cd / && %s%s --port 0 --handler %s 2>%s"):format(prefix, h.shq(service),
      h.shq(tmp .. "/embed/handler.lua"), h.shq(errfile)), "r"))
    local line = p:read("l") or ""
    local url, pid = line:match("^listening on (http://127%.0%.0%.1:%d+) %(pid (%d+)%)$")
    local svc = { url = url, pid = pid }
    function svc.finish()
      if pid then os.execute("kill -TERM " .. pid) end
      p:read("a")
      local _, _, code = p:close()
      return code, h.slurp(errfile)
    end
    if not url then
      local code, err = svc.finish()
      error(("service did not start (exit %s): %s %s"):format(tostring(code), line, err))
    end
    return svc
  end

  local function deliver(svc, body, headers)
    local hd = { ["content-type"] = "application/json" }
    for k, v in pairs(headers) do hd[k] = v end
    return assert(http.request({ method = "POST", url = svc.url .. "/webhooks/ofauth", headers = hd, body = body,
      timeout_ms = 10000 }))
  end

  it("answers 200 to a signed delivery, 401 to a bad signature, and runs the handler once", function()
    local svc = start()
    local ok, err = pcall(function()
      local body = cjson.encode({ eventType = "connection.created", live = false, data = {
        clientReferenceId = "user-1", connection = { id = "conn_embed0001", status = "active" } } })
      local signed = webhooks.sign_svix(body, env.OFAUTH_WEBHOOK_SECRET)

      local r = deliver(svc, body, signed)
      assert.equal(200, r.status)
      assert.equal("accepted", cjson.decode(r.body).status)

      -- the same delivery again (a retry by the sender): acknowledged, not handled twice
      r = deliver(svc, body, signed)
      assert.equal(200, r.status)
      assert.equal("duplicate", cjson.decode(r.body).status)

      -- signed with another secret; and a body changed after signing
      r = deliver(svc, body, webhooks.sign_svix(body, webhooks.new_secret()))
      assert.equal(401, r.status)
      assert.equal("bad_signature", cjson.decode(r.body).error)
      r = deliver(svc, body:gsub("user%-1", "user-2"), signed)
      assert.equal(401, r.status)

      -- the checklist scheme is a 401 too with the wrong secret
      r = deliver(svc, body, { ["ofauth-signature"] = webhooks.sign(body, "not-the-secret") })
      assert.equal(401, r.status)

      local s = assert(http.request({ url = svc.url .. "/stats" }))
      assert.equal(200, s.status)
      local stats = cjson.decode(s.body)
      assert.equal(1, stats.handled)
      assert.equal(1, stats.by_type["connection.created"])
      assert.equal(1, stats.inbox.done)

      local m = assert(http.request({ url = svc.url .. "/metrics" }))
      assert.matches('ofauth_webhook_rejected_total{reason="bad_signature"} 3', m.body, 1, true)
      assert.matches('ofauth_webhook_deliveries_total{result="duplicate"} 1', m.body, 1, true)
    end)
    local code, stderr = svc.finish()
    assert(ok, err)
    assert.equal(0, code, stderr)
    assert.matches("service: stopped", stderr, 1, true)
    -- the default connection handler stored the connection, encrypted
    assert.not_matches("conn_embed0001", h.slurp(env.OFLUA_STORE) .. h.slurp(env.OFLUA_STORE .. "-wal"), 1, true)
    local st = assert(store.open({ path = env.OFLUA_STORE, key = env.OFLUA_STORE_KEY }))
    local rec = cjson.decode((assert(st:get("user:user-1"))))
    st:close()
    assert.equal("conn_embed0001", rec.connection_id)
    assert.equal("active", rec.status)
  end)

  it("routes like oflua serve: 404 for an unknown path, 405 for a wrong method", function()
    local svc = start()
    local ok, err = pcall(function()
      local r = assert(http.request({ url = svc.url .. "/nope" }))
      assert.equal(404, r.status)
      r = assert(http.request({ url = svc.url .. "/webhooks/ofauth" }))
      assert.equal(405, r.status)
      assert.equal("POST", r.headers.allow)
    end)
    local code, stderr = svc.finish()
    assert(ok, err)
    assert.equal(0, code, stderr)
  end)

  it("fails to start with a clear message when the handler cannot load", function()
    local out, err, code = h.sh(("%s --port 0 --handler %s"):format(h.shq(service),
      h.shq(tmp .. "/embed/handler.lua")), { env = { OFAUTH_WEBHOOK_SECRET = "", OFLUA_STORE = env.OFLUA_STORE,
      OFLUA_STORE_KEY = env.OFLUA_STORE_KEY } })
    assert.equal(1, code, out)
    assert.matches("service: loading .*handler%.lua: OFAUTH_WEBHOOK_SECRET is not set", err)
  end)
end)
