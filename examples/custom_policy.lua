--- Changing how the OFAuth client retries and backs off, in Lua, without
-- recompiling anything.
--
--   OFAUTH_API_KEY=... oflua examples/custom_policy.lua [--max-attempts N] [--base-delay S]
--                                                        [--jitter full|none] [--max-total-delay S]
--                                                        [--connection ID]
--
-- Two ways to change the policy (ofauth.policy), both shown below:
--   1. a global default override: assign to require("ofauth.policy").defaults.
--      Every client reads its defaults through that table, so the change
--      applies to all clients (made before or after) for the fields they do
--      not set themselves;
--   2. a per-client policy table: ofauth.client{policy = {...}} overrides only
--      the fields it names, for that client. Data fields and decisions alike:
--      this one replaces the `backoff` function (a fixed schedule) and the
--      SESSION_EXPIRED reaction (`on_session_expired`) for the custom client
--      only; the default client keeps the library's (mark the stored
--      connection expired and call on_reauth_required).
-- Both clients below print each retry through an on_retry hook, then call
-- whoami and say how many attempts it took; with --connection they also
-- read that connection's profile, to show the SESSION_EXPIRED reactions. The command-line options change
-- the per-client table, so an operator can try other figures without editing
-- this file. Exit status: 0 when both calls succeeded, 1 otherwise.
local ofauth = require("ofauth")
local policy = require("ofauth.policy")

local USAGE = [[
usage: oflua examples/custom_policy.lua [--max-attempts N] [--base-delay S] [--jitter full|none]
                                         [--max-total-delay S] [--connection ID]
Environment: OFAUTH_API_KEY, OFAUTH_BASE_URL.
]]

-- ---- the per-client figures (and their command-line overrides) ------------
local custom = {
  max_attempts = 6, -- 1 call + up to 5 retries
  base_delay = 0.05, -- 0.05 s, 0.1 s, 0.2 s, ...
  max_delay = 2, -- no single wait longer than 2 s (Retry-After above it: give up)
  max_total_delay = 10, -- all waits of one call together
  jitter = "none", -- deterministic waits; "full" spreads clients apart (recommended live)
  -- The default list plus 520 and 522 (some CDNs answer these when the origin is unreachable).
  retry_statuses = { [500] = true, [502] = true, [503] = true, [504] = true, [520] = true, [522] = true },
  -- A decision, replaced for this client only: wait base_delay times a fixed
  -- schedule (1, 2, 4, 8, ...) instead of exponential backoff with jitter.
  -- Called as policy:backoff(attempt); the policy is this client's copy.
  backoff = function(p, attempt)
    local schedule = { 1, 2, 4, 8, 16 }
    return math.min(p.max_delay, p.base_delay * (schedule[attempt] or schedule[#schedule]))
  end,
  -- The reaction to SESSION_EXPIRED, replaced for this client only: no
  -- repository to mark; tell the operator. Called as
  -- policy:on_session_expired(client, connection_id, ctx) with ctx = {method,
  -- path, error}; the path is redacted. The call still fails with kind
  -- "reauth_required".
  on_session_expired = function(_, _, connection_id, ctx)
    print(("[custom] session expired on %s %s: ask the user to reconnect (%s)"):format(ctx.method,
      ctx.path, connection_id and "connection given" or "no connection"))
  end,
}
local connection_id

local argv = { ... }
local i = 1
while i <= #argv do
  local a, v = argv[i], argv[i + 1]
  local function number()
    local n = tonumber(v)
    if not n or n < 0 then
      io.stderr:write(("custom_policy: %s needs a non-negative number\n"):format(a))
      os.exit(2, true)
    end
    i = i + 1
    return n
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0, true)
  elseif a == "--max-attempts" then
    custom.max_attempts = math.max(1, math.floor(number()))
  elseif a == "--base-delay" then
    custom.base_delay = number()
  elseif a == "--max-total-delay" then
    custom.max_total_delay = number()
  elseif a == "--connection" and v then
    connection_id = v
    i = i + 1
  elseif a == "--jitter" and (v == "full" or v == "none") then
    custom.jitter = v
    i = i + 1
  else
    io.stderr:write("custom_policy: bad argument ", a, "\n", USAGE)
    os.exit(2, true)
  end
  i = i + 1
end

-- An on_retry hook gets {attempt, delay, reason, method, path, status}; the
-- path is already redacted (no connection id in clear). It must not raise:
-- the client calls it under pcall and ignores its errors.
local function printer(name)
  return function(r)
    print(("[%s] retry after attempt %d: %s%s, waiting %.2f s (%s %s)"):format(name, r.attempt, r.reason,
      r.status and (" " .. r.status) or "", r.delay, r.method, r.path))
    io.stdout:flush()
  end
end

-- ---- 1. global default override ------------------------------------------
-- Fields of ofauth.policy.defaults (see lua/ofauth/policy.lua): max_attempts,
-- base_delay, max_delay, max_total_delay, jitter, retry_statuses,
-- idempotent_methods, unsent_errors, rate_limit_status, rate_limit_codes,
-- session_expired_codes, on_reauth_required, on_retry, sleep, now, random.
policy.defaults.max_attempts = 3
policy.defaults.base_delay = 0.1
policy.defaults.max_total_delay = 5
policy.defaults.on_retry = printer("default")

-- ---- 2. per-client policy table ------------------------------------------
custom.on_retry = printer("custom")

local function check(name, client)
  local me, meta = client:whoami() -- meta: {status, headers, attempts}; on failure the error
  if not me then
    print(("[%s] failed: %s"):format(name, tostring(meta)))
    return false
  end
  print(("[%s] whoami ok after %d attempt(s): %s"):format(name, meta.attempts, tostring(me.name or me.id)))
  return true
end

local custom_client, err = ofauth.client({ policy = custom })
if not custom_client then
  io.stderr:write("custom_policy: ", tostring(err), "\n")
  os.exit(1, true)
end
local default_client = assert(ofauth.client())

print(("[custom] max_attempts=%d base_delay=%gs jitter=%s max_total_delay=%gs"):format(
  custom_client.policy.max_attempts, custom_client.policy.base_delay, custom_client.policy.jitter,
  custom_client.policy.max_total_delay))
print(("[default] max_attempts=%d base_delay=%gs jitter=%s max_total_delay=%gs"):format(
  default_client.policy.max_attempts, default_client.policy.base_delay, default_client.policy.jitter,
  default_client.policy.max_total_delay))

local ok1 = check("custom", custom_client)
local ok2 = check("default", default_client)
if connection_id then
  for _, c in ipairs({ { "custom", custom_client }, { "default", default_client } }) do
    local me, e = c[2]:access(connection_id):self()
    print(("[%s] self: %s"):format(c[1], me and "ok" or tostring(e and e.kind)))
    if not me then ok1 = false end
  end
end
os.exit((ok1 and ok2) and 0 or 1, true)
