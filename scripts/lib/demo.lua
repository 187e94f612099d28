-- scripts/demo's driver (run by build/oflua): the whole product end to end on
-- 127.0.0.1, with a readable report. See scripts/demo.
--
-- The emulator runs in this process (its API in its own server VM, its
-- webhook delivery loop here); the integration app runs as a real
-- `oflua serve examples/webhook_receiver.lua` subprocess configured only by
-- environment variables, as an integrator would run it; `oflua doctor` runs
-- as a subprocess too. Secrets are generated fresh and never printed.
local cjson = require("cjson")
local core = require("oflua.core")
local crypto = require("oflua.crypto")
local http = require("oflua.http")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")
local redact = require("ofauth.redact")

local BIN = arg[-1] or "build/oflua"
local SOURCE = core.lua_dir:gsub("/lua$", "")
local KEEP = os.getenv("OFLUA_DEMO_KEEP") == "1"
-- --postgres (scripts/demo --postgres runs this under scripts/with-postgres):
-- the store is a PostgreSQL database shared by three receivers.
local PG = false
for _, a in ipairs(arg) do if a == "--postgres" then PG = true end end
local PG_URL = PG and assert(os.getenv("OFLUA_TEST_PG_URL"), "--postgres: run through scripts/demo --postgres")
local APPS = PG and { "app", "app2", "app3" } or { "app" }

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- ---- report ------------------------------------------------------------------

local transcript = {} -- everything printed, scanned for secrets at the end
local function say(fmt, ...)
  local line = fmt:format(...)
  transcript[#transcript + 1] = line
  io.stdout:write(line, "\n")
  io.stdout:flush()
end

local steps, failed = 0, 0
local function step(title, fn)
  steps = steps + 1
  local t0 = core.monotonic()
  local ok, detail = xpcall(fn, debug.traceback)
  local ms = (core.monotonic() - t0) * 1000
  if ok then
    say("  ✓ %-52s %s (%.0f ms)", title, detail or "", ms)
  else
    failed = failed + 1
    say("  ✗ %-52s", title)
    for l in tostring(detail):gmatch("[^\n]+") do say("      %s", l) end
  end
  return ok
end

local function check(cond, msg, ...)
  if not cond then error(msg:format(...), 0) end
end

-- ---- processes and files -------------------------------------------------------

local tmp = io.popen("mktemp -d /tmp/oflua-demo.XXXXXX"):read("l")
local function path(name) return tmp .. "/" .. name end

local function slurp(p)
  local f = io.open(p, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local children = {}
local function spawn(name, env, argv)
  local parts = { "exec env" }
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. shq(v) end
  for _, a in ipairs(argv) do parts[#parts + 1] = shq(a) end
  local log = path(name .. ".log")
  local cmd = ("(%s) >%s 2>&1 </dev/null & echo $!"):format(table.concat(parts, " "), shq(log))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("l"))
  p:close()
  children[name] = pid
  return pid, log
end

local function alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true end

local function stop_child(name, sig)
  local pid = children[name]
  if not pid then return true end
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", pid))
  for _ = 1, 100 do
    if not alive(pid) then
      children[name] = nil
      return true
    end
    core.sleep(0.05)
  end
  os.execute(("kill -KILL %d 2>/dev/null"):format(pid))
  children[name] = nil
  return false
end

local function wait_for(pred, timeout)
  local deadline = core.monotonic() + (timeout or 10)
  while core.monotonic() < deadline do
    local v = pred()
    if v then return v end
    core.sleep(0.05)
  end
  return nil
end

-- ---- HTTP helpers ------------------------------------------------------------------

-- The example app's admin token (its data routes need it) and public URL:
-- the browser is sent back to PUBLIC_URL/link/callback, which (like a
-- reverse proxy would) the demo maps to the app's local address.
local ADMIN_TOKEN = crypto.hex(crypto.random(16))
local PUBLIC_URL = "https://app.example.test"
local app_url
local function call(method, url, body, headers)
  local h = headers or {}
  if url:sub(1, #PUBLIC_URL) == PUBLIC_URL and app_url then url = app_url .. url:sub(#PUBLIC_URL + 1) end
  if app_url and url:sub(1, #app_url) == app_url then h.authorization = "Bearer " .. ADMIN_TOKEN end
  if body ~= nil and type(body) ~= "string" then
    body = cjson.encode(body)
    h["content-type"] = "application/json"
  end
  local resp, err = http.request({ method = method, url = url, body = body, headers = h,
    timeout_ms = 30000 })
  check(resp, "%s %s: %s", method, url, err and err.message or "?")
  local ok, decoded = pcall(cjson.decode, resp.body)
  return resp.status, ok and decoded or resp.body, resp
end

-- ---- configuration -------------------------------------------------------------------

local api_key = "sk_test_demo_" .. crypto.hex(crypto.random(12))
local secret = webhooks.new_secret()
local store_key = store.keygen()
local key_file = path("store.key")
assert(store.save_key(key_file, store_key))
local db = path("app.db")
local pg_password
if PG then
  -- a database of its own on the throwaway server
  assert(os.execute("psql " .. shq(PG_URL) .. " -qAtX -c 'CREATE DATABASE oflua_demo' >/dev/null"))
  db = PG_URL:gsub("/[^/?]*$", "/oflua_demo")
  pg_password = PG_URL:match("^%a+://[^:/@]+:([^@]+)@")
  if pg_password then redact.register_secret(pg_password) end
end
for _, s in ipairs({ api_key, secret, store_key }) do redact.register_secret(s) end

say("oflua demo: the OFAuth integration end to end, offline (state in %s, removed after a pass)", tmp)
if PG then say("  store: PostgreSQL %s (a throwaway cluster), three receivers", redact.text(db)) end
say("")

local emu, conn_id, emu_url
local connection_secrets = {}

local function cleanup()
  for _, name in ipairs(APPS) do stop_child(name) end
  if emu then emu:stop(1) end
  if not KEEP and failed == 0 then os.execute("rm -rf " .. shq(tmp)) end
end

local ok_all = true
local function run()
  say("1. Start the local OFAuth emulator and the integration app")
  ok_all = step("emulator on 127.0.0.1 (svix-signed webhooks)", function()
    local err
    emu, err = require("ofauth.emulator").start({
      api_keys = { api_key }, webhook_secret = secret, signing = "svix",
      redirect_uris = { PUBLIC_URL .. "/link/callback" }, -- as registered in the dashboard
      -- the app's address is known once it runs; deliveries start after that
      webhook_url = "http://127.0.0.1:9/unset", subscribers = 2500,
      webhook_base_delay = 0.2, webhook_timeout_ms = 5000,
      upload_part_size = 64 * 1024, -- so the demo's upload goes in parts
    })
    check(emu, "cannot start the emulator: %s", tostring(err))
    emu_url = emu:url()
    return emu_url
  end)
  if not ok_all then return end

  local app_env
  ok_all = step("app: oflua serve examples/webhook_receiver.lua", function()
    app_env = {
      OFAUTH_API_KEY = api_key, OFAUTH_BASE_URL = emu_url, OFAUTH_WEBHOOK_SECRET = secret,
      OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = key_file, OFAUTH_LOG = "info",
      OFLUA_ADMIN_TOKEN = ADMIN_TOKEN, OFLUA_PUBLIC_URL = PUBLIC_URL,
    }
    local _, log = spawn("app", app_env, { BIN, "serve", SOURCE .. "/examples/webhook_receiver.lua",
      "--port", "0", "--workers", "2" })
    app_url = wait_for(function() return slurp(log):match("listening on (http://[%d.:]+)") end, 15)
    check(app_url, "the app did not start:\n%s", slurp(log))
    if emu.set_webhook_url then
      emu:set_webhook_url(app_url .. "/webhooks/ofauth")
    else
      emu.cfg.webhook_url = app_url .. "/webhooks/ofauth"
    end
    return app_url
  end)
  if not ok_all then return end

  say("")
  say("2. Link: a user connects an OnlyFans account (headless)")
  local redirect, link_url, cookie
  ok_all = step("app starts a Link session for user 'alice'", function()
    local status, body, resp = call("GET", app_url .. "/link/start?user=alice&format=json")
    check(status == 200 and type(body) == "table" and body.url, "link/start answered %s: %s", status,
      cjson.encode(body))
    link_url = body.url
    cookie = (resp.headers["set-cookie"] or ""):match("^[^;]+") -- the browser keeps it
    return (body.url:gsub("/link/.*$", "/link/…"))
  end) and step("user approves on the hosted Link page", function()
    local session = link_url:match("/link/([^/?#]+)")
    local status, body = call("POST", emu_url .. "/emulator/link/" .. session .. "/complete",
      { outcome = "success" })
    check(status == 200 and body.redirectUrl, "complete answered %s", status)
    redirect = body.redirectUrl
    conn_id = body.connectionId
    connection_secrets[#connection_secrets + 1] = conn_id
    redact.register_secret(conn_id)
    return "redirect back with status=success"
  end) and step("callback checked against the pending session", function()
    -- forged: the same redirect without the session's state (which OFAuth
    -- hands back in the real one) and without the browser's cookie
    local forged = call("GET", redirect:match("^[^?]+") .. "?status=cancelled&client_reference_id=alice")
    check(forged == 400, "a forged callback (no state, no cookie) got %s", forged)
    local status, body = call("GET", redirect, nil, { cookie = cookie })
    check(status == 200 and body.status == "success" and body.user_id == "alice",
      "callback answered %s: %s", status, cjson.encode(body))
    return "accepted; a forged one (no session state) is refused (400)"
  end)
  if not ok_all then return end

  say("")
  say("3. Webhooks: connection.created, verified and stored encrypted")
  ok_all = step("emulator delivers connection.created (svix-signed)", function()
    check(emu:deliver_pending(15), "deliveries did not finish")
    local recs = emu:deliveries()
    local last = recs[#recs]
    check(last and last.state == "delivered", "last delivery: %s", cjson.encode(last or {}))
    return ("%d delivery, answered %s"):format(#recs, tostring(last.status or last.http_status or "2xx"))
  end) and step("app stored the connection for alice", function()
    -- the 200 came once the event was stored; its handler runs right after,
    -- in the background (the server's tick)
    local status, body
    wait_for(function()
      status, body = call("GET", app_url .. "/users/alice")
      return status == 200 and body.status == "active"
    end, 15)
    check(status == 200 and body.status == "active", "users/alice: %s %s", status, cjson.encode(body))
    return "status active, " .. tostring(#(body.permissions or {})) .. " permissions"
  end) and step(PG and "pg_dump of the database holds no connection id in clear"
    or "the store file holds no connection id in clear", function()
    local bytes = slurp(db) .. slurp(db .. "-wal")
    if PG then
      assert(os.execute("pg_dump " .. shq(db) .. " >" .. shq(path("dump.sql"))))
      bytes = slurp(path("dump.sql"))
    end
    check(#bytes > 0, "no store file at %s", db)
    check(not bytes:find(conn_id, 1, true), "the connection id is in the store file in clear")
    check(not bytes:find("alice", 1, true), "the user id is in the store file in clear")
    return ("%d bytes scanned (%s)"):format(#bytes, redact.id(conn_id))
  end) and step("a replayed delivery is acknowledged once", function()
    local body = cjson.encode({ eventType = "connection.updated", live = false,
      data = { clientReferenceId = "alice", connection = { id = conn_id, status = "active" } } })
    local h = webhooks.sign_svix(body, secret)
    local s1, b1 = call("POST", app_url .. "/webhooks/ofauth", body, h)
    local s2, b2 = call("POST", app_url .. "/webhooks/ofauth", body, h)
    check(s1 == 200 and b1.status == "accepted" and s2 == 200 and b2.status == "duplicate",
      "got %s %s / %s %s", s1, cjson.encode(b1), s2, cjson.encode(b2))
    local s3 = call("POST", app_url .. "/webhooks/ofauth", body, webhooks.sign_svix(body, webhooks.new_secret()))
    check(s3 == 401, "a forged signature got %s", s3)
    return "accepted, then duplicate; forged signature 401"
  end)
  if not ok_all then return end

  say("")
  say("4. Access API with the stored connection id")
  ok_all = step("access/self for alice", function()
    local status, body = call("GET", app_url .. "/users/alice/profile")
    check(status == 200, "profile: %s %s", status, cjson.encode(body))
    return "username " .. tostring(body.username)
  end) and step("all subscribers, page by page", function()
    local status, body = call("GET", app_url .. "/users/alice/subscribers?limit=100")
    check(status == 200 and body.subscribers == 2500, "subscribers: %s %s", status, cjson.encode(body))
    return ("%d subscribers in %d pages"):format(body.subscribers, body.pages)
  end)
  if not ok_all then return end
  -- Any endpoint of the catalogue, by its SDK name, from a script
  local acc = assert(require("ofauth").client({ api_key = api_key, base_url = emu_url })):access(conn_id)
  ok_all = step("earnings transactions, marker <- nextMarker", function()
    local pages, n = 0, 0
    for _ in acc:each("access.earnings.listTransactions", { startDate = "2026-01-01" },
      { on_page = function() pages = pages + 1 end }) do n = n + 1 end
    check(n > 0 and pages > 1, "%d transactions in %d pages", n, pages)
    return ("%d transactions in %d pages"):format(n, pages)
  end) and step("posts, time cursor beforePublishTime <- tailMarker", function()
    local pages, n = 0, 0
    for _ in acc:each("access.listPosts", { limit = 10 }, { on_page = function() pages = pages + 1 end }) do
      n = n + 1
    end
    check(n > 0 and pages > 1, "%d posts in %d pages", n, pages)
    return ("%d posts in %d pages"):format(n, pages)
  end) and step("upload a file to the vault (init, parts, complete)", function()
    local parts = 0
    local res, err = acc:upload({ data = ("\0"):rep(150 * 1024), filename = "demo.png",
      content_type = "image/png", on_progress = function(p) parts = p.parts end })
    check(res, "upload: %s", tostring(err))
    return ("%d bytes in %d parts -> vault media %s"):format(150 * 1024, parts, tostring(res.media.id))
  end)
  if not ok_all then return end

  say("")
  say("5. Error policies at work")
  local function metric(name)
    local _, text = call("GET", app_url .. "/metrics")
    for line in tostring(text):gmatch("[^\n]+") do
      local v = line:match("^" .. name .. " (%S+)$")
      if v then return tonumber(v) end
    end
    return 0
  end
  ok_all = step("429 with Retry-After: backoff, then success", function()
    local before = metric("ofauth_rate_limited_total")
    local s = call("POST", emu_url .. "/emulator/faults", { kind = "rate_limit", count = 2, retry_after = 1,
      path_prefix = "/v2/access/self" })
    check(s == 200 or s == 201, "fault injection answered %s", s)
    local t0 = core.monotonic()
    local status, body = call("GET", app_url .. "/users/alice/profile")
    local took = core.monotonic() - t0
    check(status == 200, "profile after rate limit: %s %s", status, cjson.encode(body))
    local hits = metric("ofauth_rate_limited_total") - before
    check(hits == 2, "rate-limit hits counted: %s", hits)
    return ("2 × 429 honoured (Retry-After 1 s), answered after %.1f s"):format(took)
  end) and step("SESSION_EXPIRED: marked expired, re-auth hook once", function()
    local s = call("POST", emu_url .. "/emulator/faults", { kind = "session_expired", connection_id = conn_id })
    check(s == 200 or s == 201, "fault injection answered %s", s)
    local status, body = call("GET", app_url .. "/users/alice/profile")
    check(status == 409 and body.error == "reauth_required", "profile: %s %s", status, cjson.encode(body))
    local _, st = call("GET", app_url .. "/status")
    check(st.reauth_notifications == 1, "notifications: %s", tostring(st.reauth_notifications))
    local _, u = call("GET", app_url .. "/users/alice")
    check(u.status == "expired", "alice is %s", tostring(u.status))
    -- a second call does not notify again, and is not even sent
    call("GET", app_url .. "/users/alice/profile")
    local _, st2 = call("GET", app_url .. "/status")
    check(st2.reauth_notifications == 1, "notified again: %s", tostring(st2.reauth_notifications))
    return "no retry; user notified once with a reconnect link"
  end) and step("user reconnects through Link (connectionId reused)", function()
    call("DELETE", emu_url .. "/emulator/faults")
    local status, body, resp = call("GET", app_url .. "/link/start?user=alice&reconnect=1&format=json")
    check(status == 200, "link/start: %s", status)
    local session = body.url:match("/link/([^/?#]+)")
    local s2, b2 = call("POST", emu_url .. "/emulator/link/" .. session .. "/complete", { outcome = "success" })
    check(s2 == 200, "complete: %s %s", s2, cjson.encode(b2))
    local scb = call("GET", b2.redirectUrl, nil, { cookie = (resp.headers["set-cookie"] or ""):match("^[^;]+") })
    check(scb == 200, "callback after reconnecting: %s", scb)
    check(emu:deliver_pending(15), "deliveries did not finish")
    local u
    wait_for(function()
      u = select(2, call("GET", app_url .. "/users/alice"))
      return u.status == "active"
    end, 15)
    check(u.status == "active", "alice is %s after reconnecting", tostring(u.status))
    if b2.connectionId and b2.connectionId ~= cjson.null and b2.connectionId ~= conn_id then
      connection_secrets[#connection_secrets + 1] = b2.connectionId
      redact.register_secret(b2.connectionId)
    end
    local s3 = call("GET", app_url .. "/users/alice/profile")
    check(s3 == 200, "profile after reconnecting: %s", s3)
    return "active again; access/self works"
  end)
  if not ok_all then return end

  say("")
  say("6. oflua doctor against it all")
  ok_all = step("pre-production checklist", function()
    local env = {
      OFAUTH_API_KEY = api_key, OFAUTH_BASE_URL = emu_url, OFAUTH_WEBHOOK_SECRET = secret,
      OFAUTH_REDIRECT_URL = PUBLIC_URL .. "/link/callback", OFAUTH_WEBHOOK_URL = app_url .. "/webhooks/ofauth",
      OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = key_file, OFAUTH_LOG = "error",
      OFLUA_ADMIN_TOKEN = ADMIN_TOKEN, OFLUA_PUBLIC_URL = PUBLIC_URL,
    }
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. shq(v) end
    parts[#parts + 1] = shq(BIN) .. " doctor --user alice"
    local out_file = path("doctor.out")
    local ok = os.execute(table.concat(parts, " ") .. " >" .. shq(out_file) .. " 2>&1")
    local out = slurp(out_file)
    for l in out:gmatch("[^\n]+") do say("      %s", l) end
    check(ok, "oflua doctor failed")
    return ""
  end)
  if not ok_all then return end

  if PG then
    say("")
    say("6b. Scale-out: three receivers on one PostgreSQL")
    local apps = { app_url }
    ok_all = step("two more receivers on the same database", function()
      for i = 2, 3 do
        local _, log = spawn("app" .. i, app_env, { BIN, "serve", SOURCE .. "/examples/webhook_receiver.lua",
          "--port", "0", "--workers", "2" })
        apps[i] = wait_for(function() return slurp(log):match("listening on (http://[%d.:]+)") end, 15)
        check(apps[i], "app%d did not start:\n%s", i, slurp(log))
      end
      return table.concat(apps, " ")
    end)
    local scale
    ok_all = ok_all and step("emulator delivers 30 events round-robin, retries go elsewhere", function()
      local per = { 0, 0, 0 }
      local ids = {}
      for n = 1, 30 do
        local i = (n - 1) % 3 + 1
        emu:set_webhook_url(apps[i] .. "/webhooks/ofauth")
        local status, body = call("POST", emu_url .. "/emulator/webhooks/send",
          { type = "connection.updated", connection_id = conn_id })
        check(status == 202, "send: %s %s", status, cjson.encode(body))
        check(emu:deliver_pending(15), "deliveries did not finish")
        per[i] = per[i] + 1
        ids[#ids + 1] = body.id
      end
      emu:set_webhook_url(app_url .. "/webhooks/ofauth")
      local recs = emu:deliveries("delivered")
      check(#recs >= 30, "%d delivered", #recs)
      -- the sender's retries of each event (same svix id) reach the two other receivers
      local answers = { accepted = 0, duplicate = 0 }
      for n, id in ipairs(ids) do
        for k = 1, 2 do
          local body = cjson.encode({ eventType = "connection.updated", live = false,
            data = { clientReferenceId = "alice", connection = { id = conn_id, status = "active" } } })
          local i = (n - 1 + k) % 3 + 1
          local st, b = call("POST", apps[i] .. "/webhooks/ofauth", body, webhooks.sign_svix(body, secret, id))
          check(st == 200, "retry of %s to app%d: %s", id, i, st)
          answers[b.status] = (answers[b.status] or 0) + 1
        end
      end
      check(answers.duplicate == 60 and answers.accepted == 0, "retries: %s", cjson.encode(answers))
      -- every event is in the shared inbox once, and done
      local st <close> = assert(store.open({ url = db, key = store_key }))
      -- handlers run in the background once an event is stored: wait for them
      local done = 0
      wait_for(function()
        done = 0
        for _, id in ipairs(ids) do
          local e = st:inbox_get("svix:" .. id)
          check(e, "%s is not in the inbox", id)
          if e.state == "done" then done = done + 1 end
        end
        return done == 30
      end, 20)
      check(done == 30, "%d of 30 events done", done)
      scale = { per = per, done = done }
      return ("%d/%d/%d per receiver; 60 retries answered duplicate"):format(per[1], per[2], per[3])
    end)
    if ok_all then
      say("  each event handled once: 30 events, 90 deliveries over 3 receivers (30 from the emulator,"
        .. " 60 retries answered duplicate), %d done in the shared inbox", scale.done)
    end
    if not ok_all then return end
  end

  say("")
  say("7. Secrets")
  ok_all = step("no key, secret or connection id in any output or log", function()
    for _, name in ipairs(APPS) do stop_child(name) end -- flush and close the logs
    local texts = { table.concat(transcript, "\n"), slurp(path("doctor.out")) }
    for _, name in ipairs(APPS) do texts[#texts + 1] = slurp(path(name .. ".log")) end
    local secrets = { api_key, secret, store_key, crypto.unbase64(store_key), pg_password }
    for _, c in ipairs(connection_secrets) do secrets[#secrets + 1] = c end
    local bytes = 0
    for _, t in ipairs(texts) do
      bytes = bytes + #t
      for _, s in ipairs(secrets) do
        check(not t:find(s, 1, true), "a secret appears in the output (%s)", redact.text(s))
      end
    end
    return ("%d bytes of output and logs scanned"):format(bytes)
  end)
end

local t0 = core.monotonic()
local ok, err = xpcall(run, debug.traceback)
if not ok then
  failed = failed + 1
  say("demo error: %s", redact.text(tostring(err)))
end
cleanup()
say("")
if failed == 0 and ok_all then
  say("demo: all %d steps passed in %.1f s", steps, core.monotonic() - t0)
  os.exit(0)
else
  say("demo: FAILED (%d of %d steps); state and logs kept in %s", failed, steps, tmp)
  os.exit(1)
end
