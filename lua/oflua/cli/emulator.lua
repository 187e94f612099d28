-- oflua emulator: run a local OFAuth API emulator (Link, connections, Access API, webhooks, faults)
local cli = require("oflua.cliutil")

local DEFAULT_PORT = 8788

local cmd = cli.command({
  name = "emulator", summary = "run a local OFAuth API emulator (Link, connections, Access API, webhooks, faults)",
  max_args = 0,
  description = [[
Serves a local stand-in for the OFAuth API (no network needed) and delivers
signed webhooks to --webhook-url. Stops on Ctrl-C / SIGTERM.]],
  flags = {
    { "port", "N", "port to listen on (default 8788; 0 = any free port)", type = "number",
      min = 0, max = 65535, integer = true },
    { "host", "ADDR", "address to listen on (default 127.0.0.1)" },
    { "api-key", "K", "accepted API key (default: $OFAUTH_API_KEY, else sk_test_emulator); keys "
      .. "starting with sk_live_, live_ or prod are \"production\", others \"sandbox\"", type = "list" },
    { "redirect-uri", "URI", "allowed Link redirectUrl (default: any http(s) URL on loopback)",
      type = "list" },
    { "webhook-url", "URL", "where to POST webhook events (default: none, events are recorded as skipped)" },
    { "webhook-secret", "S", "signing secret (default $OFAUTH_WEBHOOK_SECRET); svix needs whsec_<base64>" },
    { "signing", "svix|checklist", "signature scheme and envelope (default svix)",
      choices = { "svix", "checklist" } },
    { "webhook-attempts", "N", "attempts per event (default 5)", type = "number", min = 1,
      max = 100, integer = true },
    { "webhook-timeout-ms", "N", "timeout of one attempt (default 10000)", type = "number", min = 1,
      max = 600000, integer = true },
    { "webhook-base-delay-ms", "N", "delay before the 2nd attempt, doubling after (default 1000, "
      .. "capped at 60 s)", type = "number", min = 0, max = 3600000, integer = true },
    { "subscribers", "N", "subscribers per connection (default 1000)", type = "number", min = 0,
      max = 10000000, integer = true },
    { "seed", "N", "seed of the generated data of the other endpoints (default 0)", type = "number",
      min = 0, max = 1000000, integer = true },
    { "upload-part-size", "N", "bytes per upload part announced by uploads/init (default 5 MiB)",
      type = "number", min = 1, max = 1073741824, integer = true },
    { "error-shape", "sdk|checklist", "error bodies {error, code, details} (default) or {type, message}",
      choices = { "sdk", "checklist" } },
    { "state", "FILE", "keep connections and Link sessions in FILE (JSON, written atomically, mode 0600)" },
    { "fault", "SPEC", "initial fault, e.g. rate_limit,count=3,retry_after=2 (kinds: rate_limit "
      .. "server_error slow drop session_expired; fields: count retry_after status delay_ms "
      .. "connection_id path_prefix)", type = "list" },
    { "ready-file", "FILE", "write the base URL to FILE once listening (for scripts to wait on)" },
    { "quiet", false, "no request / delivery log lines on stderr" },
  },
  env = { "OFAUTH_API_KEY", "OFAUTH_WEBHOOK_SECRET" },
  footer = [[
Control API (no key; loopback): POST /emulator/link/{session}/complete
{outcome, step, error_code}; GET /emulator/state, /emulator/deliveries;
POST|GET|DELETE /emulator/faults; POST /emulator/connections/{id}/expire;
POST /emulator/rules; POST /emulator/webhooks/send {type, data?};
PUT /emulator/webhook {url} (deliver elsewhere from now on).]],
})
local ok, opts = cmd:parse({ ... })
if not ok then return opts end

local emulator = require("ofauth.emulator")
local faults = require("ofauth.emulator.faults")

local api_keys = opts.api_key
if not api_keys then
  local k = cli.env("OFAUTH_API_KEY")
  api_keys = k and { k } or nil
end
local fault_rules = {}
for _, spec in ipairs(opts.fault or {}) do
  local rule, err = faults.parse_spec(spec)
  if not rule then cli.fail("--fault: " .. err) end
  fault_rules[#fault_rules + 1] = rule
end

local cfg = {
  host = opts.host,
  port = opts.port or DEFAULT_PORT,
  api_keys = api_keys,
  redirect_uris = opts.redirect_uri,
  webhook_url = opts.webhook_url,
  webhook_secret = cli.pick(opts.webhook_secret, cli.env("OFAUTH_WEBHOOK_SECRET")),
  signing = opts.signing,
  webhook_attempts = opts.webhook_attempts,
  webhook_timeout_ms = opts.webhook_timeout_ms,
  webhook_base_delay = opts.webhook_base_delay_ms and opts.webhook_base_delay_ms / 1000,
  subscribers = opts.subscribers,
  data_seed = opts.seed,
  upload_part_size = opts.upload_part_size,
  error_shape = opts.error_shape,
  state = opts.state,
  faults = fault_rules,
  log = not opts.quiet,
  handle_signals = true,
}
-- Without --webhook-url a secret from the environment is kept (so that
-- PUT /emulator/webhook can name a receiver later) when it suits the signing
-- scheme; one that does not (a raw secret with svix) is ignored, not an error.
if not cfg.webhook_url and not opts.webhook_secret and cfg.webhook_secret
  and (cfg.signing or "svix") == "svix" and not cfg.webhook_secret:match("^whsec_") then
  cfg.webhook_secret = nil
end

local emu, err = emulator.start(cfg)
if not emu then cli.fail(err) end

local c = emu.cfg
local hook = "off (events recorded as skipped)"
if c.webhook_url then
  hook = ("%s to %s"):format(c.signing, c.webhook_url:match("^%a+://[^/?#]*") or "?")
end
cli.eprintf("oflua emulator: listening on %s (%d API key(s); webhooks: %s%s)\n",
  emu:url(), #c.api_keys, hook, c.state and "; state file kept" or "")
if opts.ready_file and not cli.write_atomic(opts.ready_file, emu:url() .. "\n") then
  emu:stop()
  cli.fail("cannot write the ready file " .. opts.ready_file)
end
emu:run()
emu:stop()
cli.eprintf("oflua emulator: stopped\n")
return 0
