-- oflua doctor: the OFAuth pre-production checklist, automated (one ✓/✗ line per check).
local cli = require("oflua.cliutil")
local cjson = require("cjson")
local config = require("ofauth.config")

local cmd = cli.command({
  name = "doctor", summary = "the OFAuth pre-production checklist, automated (one ✓/✗ line per check)",
  max_args = 0,
  description = [[
Runs OFAuth's pre-production checklist against your configuration:
  api_key    the API key works (whoami) and which environment it is for; clock skew
  link       a Link session can be created for your redirect URL
  webhook    your webhook endpoint answers a correctly signed test event with 2xx
             and a wrongly signed one with 4xx
  store      the store opens with its key, round-trips a value, holds no plaintext
  access     Access API calls work with a stored connection id
  app        the example app's settings (examples/webhook_receiver.lua):
             OFLUA_ADMIN_TOKEN and OFLUA_PUBLIC_URL; only warns (! lines),
             never fails the run]],
  flags = {
    { "api-key", "K", "the API key (else OFAUTH_API_KEY)" },
    { "base-url", "URL", "the API base URL (else OFAUTH_BASE_URL)" },
    { "redirect-url", "URL", "a redirect URI registered in the dashboard (else OFAUTH_REDIRECT_URL)" },
    { "webhook-url", "URL", "your endpoint receiving OFAuth webhooks (else OFAUTH_WEBHOOK_URL)" },
    { "secret", "S", "the webhook signing secret (else OFAUTH_WEBHOOK_SECRET)" },
    { "scheme", "svix|checklist", "signature scheme of the test events (default svix)",
      choices = { "svix", "checklist" } },
    { "store", "PATH|URL", "the store: a SQLite file or a postgresql:// URL (else OFLUA_STORE)" },
    { "key-file", "FILE", "the store's key file (else OFLUA_STORE_KEY_FILE, OFLUA_STORE_KEY)" },
    { "namespace", "NAME", "the store's namespace (default \"default\")" },
    { "user", "ID", "check Access with this user's stored connection (default: the first active)" },
    { "skip", "NAME", "skip a check: api_key, link, webhook, store, access or app", type = "list",
      choices = nil },
    { "timeout-ms", "N", "timeout of each API call (default 15000)", type = "number", min = 1,
      max = 600000, integer = true },
    "json",
  },
  env = { "OFAUTH_API_KEY", "OFAUTH_BASE_URL", "OFAUTH_REDIRECT_URL", "OFAUTH_WEBHOOK_URL",
    "OFAUTH_WEBHOOK_SECRET", "OFLUA_STORE", "OFLUA_STORE_KEY_FILE", "OFLUA_STORE_KEY", "OFAUTH_LOG",
    { "OFLUA_ADMIN_TOKEN", "the example app's admin token (the app check)" },
    { "OFLUA_PUBLIC_URL", "the example app's public base URL (the app check)" } },
  footer = "Exit status 0 when every check that ran passed (warnings do not count), 1 otherwise.",
})
local ok_parse, opts = cmd:parse({ ... })
if not ok_parse then return opts end

local results = {}
local skip = {}
local CHECKS = { api_key = true, link = true, webhook = true, store = true, access = true, app = true }
for _, s in ipairs(opts.skip or {}) do
  if not CHECKS[s] then
    cli.usage_error(("--skip %s: no such check (api_key, link, webhook, store, access, app)%s"):format(s,
      cli.did_you_mean(s, { "api_key", "link", "webhook", "store", "access", "app" })), "oflua doctor")
  end
  skip[s] = true
end

local function report(name, ok, detail, hint)
  local r = { check = name, ok = ok, detail = detail, hint = (not ok) and hint or nil }
  results[#results + 1] = r
  if not opts.json then
    io.write(("%s %s %s\n"):format(ok and cli.paint("✓", "green") or cli.paint("✗", "red"),
      cli.pad(name, 8), detail))
    if r.hint then io.write(("  hint: %s\n"):format(hint)) end
    io.stdout:flush()
  end
end

-- A warning: printed (and in --json with ok = true, warning = true) but
-- not a failure.
local function warn(name, detail, hint)
  results[#results + 1] = { check = name, ok = true, warning = true, detail = detail, hint = hint }
  if not opts.json then
    io.write(("! %-8s %s\n"):format(name, detail))
    if hint then io.write(("  hint: %s\n"):format(hint)) end
    io.stdout:flush()
  end
end

local function run(name, fn)
  if skip[name] then
    results[#results + 1] = { check = name, skipped = true }
    if not opts.json then io.write(("- %-8s skipped\n"):format(name)) end
    return
  end
  local ok, err = pcall(fn)
  if not ok then report(name, false, "internal error: " .. tostring(err), "report this as a bug") end
end

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

local client, client_err = config.client(opts, { timeout_ms = opts.timeout_ms or 15000,
  policy = { max_attempts = 2, max_total_delay = 5 } })

-- 1. API key -------------------------------------------------------------------
run("api_key", function()
  if not client then
    return report("api_key", false, client_err, "export OFAUTH_API_KEY=<your Sandbox key> (dashboard > API keys)")
  end
  local me, err = client:whoami()
  local meta = err -- on success the second result is {status, headers, attempts}
  if not me then
    local hint = "check the network and OFAUTH_BASE_URL (" .. client.base_url .. ")"
    if err.status == 401 or err.status == 403 then
      hint = "the key was refused: copy it again from the dashboard; Sandbox and Production keys differ"
    end
    return report("api_key", false, tostring(err), hint)
  end
  local envname = me.environment
  if not envname then
    local key = config.api_key(opts)
    envname = (key:match("test") or key:match("sandbox")) and "sandbox" or "production (assumed)"
  end
  -- Clock skew against the API's Date header: webhook timestamps are refused
  -- beyond the tolerance (300 s), so a skewed clock rejects every delivery.
  local skew = ""
  local server_time = require("ofauth.policy").http_date(meta and meta.headers and meta.headers.date)
  if server_time then
    local d = os.time() - server_time
    if math.abs(d) > 60 then
      return report("api_key", false, ("works, but this clock is %d s %s OFAuth's"):format(math.abs(d),
        d > 0 and "ahead of" or "behind"), "sync the clock (NTP): webhook timestamps older or newer "
        .. "than 5 minutes are refused")
    end
    skew = (", clock within %d s"):format(math.max(1, math.abs(d)))
  end
  report("api_key", true, ("works: account %s, %s environment%s"):format(tostring(me.name or me.id), envname,
    skew))
  if tostring(envname):match("^production") then
    io.stderr:write("  note: use a Sandbox key for development and login tests ",
      "(many logins on real accounts can get an account reset)\n")
  end
end)

-- 2. Link ----------------------------------------------------------------------
run("link", function()
  local redirect = opts.redirect_url or env("OFAUTH_REDIRECT_URL")
  if not client then return report("link", false, "no API client", "fix the api_key check first") end
  if not redirect then
    return report("link", false, "no redirect URL configured",
      "pass --redirect-url or set OFAUTH_REDIRECT_URL to a redirect URI registered in the dashboard")
  end
  local ref = "oflua-doctor-" .. require("oflua.crypto").hex(require("oflua.crypto").random(4))
  local res, err = client:link_init({ redirect_url = redirect, client_reference_id = ref })
  if not res then
    local hint = "check the API key and network"
    if err.status == 400 or err.status == 422 then
      hint = "register " .. redirect .. " as a redirect URI in the OFAuth dashboard (exact match)"
    end
    return report("link", false, tostring(err), hint)
  end
  -- Cancel the test session when the API gave us its handle.
  if res.client_secret then client:cancel_link(res.client_secret) end
  report("link", true, "a Link session was created for " .. redirect)
end)

-- 3. Webhook endpoint ------------------------------------------------------------
run("webhook", function()
  local url = opts.webhook_url or env("OFAUTH_WEBHOOK_URL")
  local secret = config.webhook_secret(opts)
  if not url then
    return report("webhook", false, "no webhook URL configured",
      "pass --webhook-url or set OFAUTH_WEBHOOK_URL to your endpoint (e.g. https://you/webhooks/ofauth)")
  end
  if not secret then
    return report("webhook", false, "no webhook secret configured",
      "set OFAUTH_WEBHOOK_SECRET to the signing secret shown for your endpoint in the dashboard")
  end
  local webhooks = require("ofauth.webhooks")
  local http = require("oflua.http")
  local scheme = opts.scheme or (webhooks.svix_key(secret) and "svix" or "checklist")
  local body = cjson.encode({ eventType = "oflua.doctor", type = "oflua.doctor", live = false,
    data = { note = "test event from oflua doctor; safe to ignore" } })
  local function send(headers)
    headers["content-type"] = "application/json"
    return http.request({ method = "POST", url = url, headers = headers, body = body, timeout_ms = 10000 })
  end
  local good = scheme == "svix" and webhooks.sign_svix(body, secret)
    or { ["ofauth-signature"] = webhooks.sign(body, secret) }
  local r1, e1 = send(good)
  if not r1 then
    return report("webhook", false, ("cannot reach %s: %s"):format(url, tostring(e1.message or e1.kind)),
      "start your app (oflua serve ...) and check the URL and port")
  end
  if r1.status < 200 or r1.status >= 300 then
    local hint = "the endpoint must verify the raw body with the same secret and answer 2xx"
    if r1.status == 401 or r1.status == 400 then
      hint = "signature rejected: same secret on both sides? a proxy that re-encodes JSON breaks "
        .. "signatures (verify the raw body); server clock within 5 minutes of real time?"
    end
    return report("webhook", false, ("a correctly signed event got %d"):format(r1.status), hint)
  end
  local bad
  if scheme == "svix" then
    bad = webhooks.sign_svix(body, webhooks.new_secret())
  else
    bad = { ["ofauth-signature"] = webhooks.sign(body, "wrong-secret-for-oflua-doctor") }
  end
  local r2, e2 = send(bad)
  if not r2 then return report("webhook", false, "second request failed: " .. tostring(e2.message), "") end
  if r2.status < 400 or r2.status >= 500 then
    return report("webhook", false, ("a wrongly signed event got %d, not 4xx"):format(r2.status),
      "the endpoint must reject deliveries whose signature does not verify")
  end
  report("webhook", true, ("%s answers %d to a signed event and %d to a forged one (%s scheme)"):format(
    url, r1.status, r2.status, scheme))
end)

-- 4. Store -------------------------------------------------------------------------
local st
run("store", function()
  local err
  st, err = config.store(opts)
  if not st then
    return report("store", false, err, "oflua store keygen --out store.key; export OFLUA_STORE_KEY_FILE=store.key")
  end
  local crypto = require("oflua.crypto")
  local marker = "oflua-doctor-plaintext-" .. crypto.hex(crypto.random(8))
  local key = "doctor:" .. marker
  assert(st:put(key, marker))
  local back = st:get(key)
  st:delete(key)
  if back ~= marker then
    return report("store", false, "a value did not round-trip", "the store file may be damaged")
  end
  -- The marker was written (key and value): neither may be in the files in clear.
  local path = opts.store or env("OFLUA_STORE")
  local info = st:info()
  if info.backend ~= "sqlite" then -- PostgreSQL: sealed before it is sent; never show the password
    return report("store", true, ("opens with its key, round-trips a value (%s, %s; sealed before it is sent)")
      :format(info.backend, info.url))
  end
  for _, p in ipairs({ path, path .. "-wal" }) do
    local f = io.open(p, "rb")
    if f then
      local data = f:read("a")
      f:close()
      if data:find(marker, 1, true) then
        return report("store", false, "plaintext found in " .. p, "this store is not encrypting: report a bug")
      end
    end
  end
  report("store", true, "opens with its key, round-trips a value, no plaintext in " .. path)
end)

-- 5. Access API with a stored connection ----------------------------------------------
run("access", function()
  if not client then return report("access", false, "no API client", "fix the api_key check first") end
  if not st then return report("access", false, "no store", "fix the store check first") end
  local conns = require("ofauth.connections").new({ store = st })
  local rec
  if opts.user then
    rec = conns:get(opts.user)
  else
    for r in conns:each() do
      if r.status == "active" and r.connection_id then
        rec = r
        break
      end
    end
  end
  if not rec or not rec.connection_id then
    return report("access", false, "no stored connection to test with",
      "complete a Link flow with a Sandbox account so connection.created stores one")
  end
  local me, err = client:access(rec.connection_id):self()
  if not me then
    local hint = "check the connection's permissions in the dashboard"
    if err.kind == "reauth_required" then
      hint = "the connection expired: the user must reconnect through Link"
    elseif err.status == 404 then
      hint = ("OFAuth does not know user %s's stored connection (disconnected, or stored from a test "
        .. "event): pick another with --user"):format(rec.user_id)
    end
    return report("access", false, tostring(err), hint)
  end
  report("access", true, ("access/self works for user %s (%s)"):format(rec.user_id,
    tostring(me.username or me.name or "profile read")))
end)

-- 6. The example app's deployment settings (warnings only) ---------------------------
run("app", function()
  local token, public = env("OFLUA_ADMIN_TOKEN"), env("OFLUA_PUBLIC_URL") or env("APP_PUBLIC_URL")
  local issues = 0
  if not token then
    issues = issues + 1
    warn("app", "OFLUA_ADMIN_TOKEN is not set: the example app's /status, / and /users/... are off (404)",
      "export OFLUA_ADMIN_TOKEN=$(openssl rand -hex 32) and send it as Authorization: Bearer <token>")
  elseif #token < 16 then
    issues = issues + 1
    warn("app", "OFLUA_ADMIN_TOKEN is short (under 16 characters)", "use a random token: openssl rand -hex 32")
  end
  if not public then
    issues = issues + 1
    warn("app", "OFLUA_PUBLIC_URL is not set: the example app cannot start a Link (503) and re-auth notices "
      .. "carry no link", "export OFLUA_PUBLIC_URL=https://<your public host> (the redirect URI registered in "
      .. "the dashboard is <it>/link/callback)")
  elseif not public:match("^https://") and not public:match("^http://127%.") and
      not public:match("^http://localhost[:/]?") then
    issues = issues + 1
    warn("app", "OFLUA_PUBLIC_URL is not https: " .. public, "serve the app behind TLS in production")
  end
  if issues == 0 then report("app", true, "admin token set; public URL " .. public) end
end)

local failed = 0
for _, r in ipairs(results) do
  if r.ok == false then failed = failed + 1 end
end
if opts.json then
  print(cjson.encode({ ok = failed == 0, checks = results }))
else
  io.write(failed == 0 and "all checks passed\n" or ("%d check(s) failed\n"):format(failed))
end
return failed == 0 and 0 or 1
