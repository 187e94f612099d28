--- Counters and histograms for the integration, in Prometheus text format.
--
-- By default numbers are kept in this Lua state. In a server, call
-- `metrics.init{shared = "ofauth_metrics"}` in the worker script so every
-- worker VM adds into one oflua.server shared dictionary and /metrics shows
-- the process total (serve it with `metrics.handler()`).
--
-- Families (all prefixed ofauth_):
--   webhook_deliveries_total{result}     received, verified, accepted, duplicate
--   webhook_rejected_total{reason}       missing_header, bad_signature, ...
--   webhook_handler_failures_total       a handler raised; the event will be retried
--   webhook_dead_lettered_total          an event gave up after max attempts
--   webhook_processed_total              events whose handlers all succeeded
--   webhook_handler_timeouts_total       a handler ran past handler_timeout (counted
--                                        in handler_failures_total too)
--   webhook_inbox_pruned_total           done inbox rows deleted after the retention period
--   log_suppressed_total{event}          log lines dropped by the rate limit (ofauth.log)
--   api_calls_total{endpoint,status}     status: 2xx/4xx/5xx or error_<kind>
--   api_call_duration_seconds{endpoint}  histogram
--   rate_limited_total                   429 / RATE_LIMIT_EXCEEDED answers
--   retries_total{reason}                retries the policy made
--   session_expired_total                SESSION_EXPIRED answers and webhooks
--   store_group_*                        group commit of the webhook inbox (read from
--                                        st:group_stats() of the stores given to
--                                        track_store: process-wide, not per VM):
--                                        batches_total, rows_total, errors_total,
--                                        rejected_total (queue full), queue_depth,
--                                        max_batch_size, batch_size histogram
local M = {}

M.buckets = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

M.help = {
  ofauth_webhook_deliveries_total = { "counter", "Webhook deliveries by stage reached" },
  ofauth_webhook_rejected_total = { "counter", "Webhook deliveries rejected, by reason" },
  ofauth_webhook_handler_failures_total = { "counter", "Webhook handler errors (event retried)" },
  ofauth_webhook_dead_lettered_total = { "counter", "Webhook events dead-lettered" },
  ofauth_webhook_processed_total = { "counter", "Webhook events whose handlers succeeded" },
  ofauth_webhook_released_total = { "counter",
    "Claimed webhook events handed back unrun (the lease ran short; no attempt counted)" },
  ofauth_webhook_handler_timeouts_total = { "counter", "Webhook handlers stopped at handler_timeout" },
  ofauth_webhook_inbox_pruned_total = { "counter", "Done inbox rows pruned after the retention period" },
  ofauth_log_suppressed_total = { "counter", "Log lines suppressed by the rate limit, by event" },
  ofauth_api_calls_total = { "counter", "OFAuth API calls by endpoint and status class" },
  ofauth_api_call_duration_seconds = { "histogram", "OFAuth API call latency" },
  ofauth_rate_limited_total = { "counter", "Rate-limited API answers" },
  ofauth_retries_total = { "counter", "API call retries by reason" },
  ofauth_session_expired_total = { "counter", "Connections found with an expired session" },
}

-- A process-local dictionary with the shared dictionary's interface.
local function local_dict()
  local t = {}
  return {
    incr = function(_, k, n)
      t[k] = (t[k] or 0) + (n or 1)
      return t[k]
    end,
    get = function(_, k) return t[k] end,
    keys = function()
      local ks = {}
      for k in pairs(t) do ks[#ks + 1] = k end
      return ks
    end,
    reset = function() t = {} end,
  }
end

M.dict = local_dict()

--- Use an oflua.server shared dictionary (all worker VMs add up).
function M.init(opts)
  opts = opts or {}
  if opts.shared then
    M.dict = require("oflua.server").shared(opts.shared)
  elseif opts.dict then
    M.dict = opts.dict
  else
    M.dict = local_dict()
  end
end

local function label_value(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- key = name{a="x",b="y"} with labels in the given order
local function key(name, labels)
  if not labels or #labels == 0 then return name end
  local parts = {}
  for i = 1, #labels, 2 do parts[#parts + 1] = labels[i] .. '="' .. label_value(labels[i + 1]) .. '"' end
  return name .. "{" .. table.concat(parts, ",") .. "}"
end

function M.inc(name, labels, n) M.dict:incr(key(name, labels), n or 1) end

function M.observe(name, labels, value)
  labels = labels or {}
  for _, b in ipairs(M.buckets) do
    if value <= b then
      local l = { table.unpack(labels) }
      l[#l + 1], l[#l + 2] = "le", tostring(b)
      M.dict:incr(key(name .. "_bucket", l), 1)
    end
  end
  local l = { table.unpack(labels) }
  l[#l + 1], l[#l + 2] = "le", "+Inf"
  M.dict:incr(key(name .. "_bucket", l), 1)
  M.dict:incr(key(name .. "_sum", labels), value)
  M.dict:incr(key(name .. "_count", labels), 1)
end

-- Stores whose group-commit counters prometheus() reports (weak: a closed,
-- collected handle drops out).
M.stores = setmetatable({}, { __mode = "k" })
function M.track_store(st) M.stores[st] = true end

local GROUP_BUCKETS = { 1, 2, 4, 8, 16, 32, 64, 128, 256 }

-- Exposition lines of the tracked stores' group commit (summed).
local function group_lines()
  local sum, any = { batches = 0, rows = 0, errors = 0, rejected = 0, queue_depth = 0, max_batch = 0 }, false
  local hist = {}
  for st in pairs(M.stores) do
    local ok, g = pcall(st.group_stats, st)
    if ok and type(g) == "table" then
      any = true
      for k in pairs(sum) do
        if k == "max_batch" then sum[k] = math.max(sum[k], g[k] or 0) else sum[k] = sum[k] + (g[k] or 0) end
      end
      for i = 1, #GROUP_BUCKETS do hist[i] = (hist[i] or 0) + ((g.hist or {})[i] or 0) end
    end
  end
  if not any then return {} end
  local p = "ofauth_store_group_"
  local out = {
    "# HELP " .. p .. "batches_total Inbox group-commit transactions",
    "# TYPE " .. p .. "batches_total counter", p .. "batches_total " .. sum.batches,
    "# HELP " .. p .. "errors_total Group-commit transactions that failed (each delivery in them got 503)",
    "# TYPE " .. p .. "errors_total counter", p .. "errors_total " .. sum.errors,
    "# HELP " .. p .. "rejected_total Deliveries refused at once because the commit queue was full",
    "# TYPE " .. p .. "rejected_total counter", p .. "rejected_total " .. sum.rejected,
    "# HELP " .. p .. "queue_depth Rows waiting for the committer",
    "# TYPE " .. p .. "queue_depth gauge", p .. "queue_depth " .. sum.queue_depth,
    "# HELP " .. p .. "max_batch_size Largest batch so far",
    "# TYPE " .. p .. "max_batch_size gauge", p .. "max_batch_size " .. sum.max_batch,
    "# HELP " .. p .. "batch_size Rows per group-commit transaction",
    "# TYPE " .. p .. "batch_size histogram",
  }
  local cum = 0
  for i, b in ipairs(GROUP_BUCKETS) do
    cum = cum + hist[i]
    out[#out + 1] = ('%sbatch_size_bucket{le="%d"} %d'):format(p, b, cum)
  end
  out[#out + 1] = ('%sbatch_size_bucket{le="+Inf"} %d'):format(p, sum.batches)
  out[#out + 1] = p .. "batch_size_sum " .. sum.rows
  out[#out + 1] = p .. "batch_size_count " .. sum.batches
  return out
end

--- Value of one series (0 when never counted), e.g. M.value("ofauth_rate_limited_total").
function M.value(name, labels) return M.dict:get(key(name, labels)) or 0 end

-- Hooks the library calls.
local function status_class(status)
  if math.type(status) == "integer" then return ("%dxx"):format(status // 100) end
  return tostring(status)
end

function M.api_call(endpoint, status, seconds)
  M.inc("ofauth_api_calls_total", { "endpoint", endpoint, "status", status_class(status) })
  if seconds then M.observe("ofauth_api_call_duration_seconds", { "endpoint", endpoint }, seconds) end
end
function M.retry(reason) M.inc("ofauth_retries_total", { "reason", reason }) end
function M.rate_limited() M.inc("ofauth_rate_limited_total") end
function M.session_expired() M.inc("ofauth_session_expired_total") end
-- (a few fixed results, counted on every delivery: their keys are built once)
local webhook_keys, n_webhook_keys = {}, 0
function M.webhook(result)
  local k = webhook_keys[result]
  if not k then
    k = key("ofauth_webhook_deliveries_total", { "result", result })
    if n_webhook_keys < 64 then
      webhook_keys[result], n_webhook_keys = k, n_webhook_keys + 1
    end
  end
  M.dict:incr(k, 1)
end
function M.webhook_rejected(reason) M.inc("ofauth_webhook_rejected_total", { "reason", reason }) end
function M.handler_failure() M.inc("ofauth_webhook_handler_failures_total") end
function M.dead_lettered() M.inc("ofauth_webhook_dead_lettered_total") end
function M.processed() M.inc("ofauth_webhook_processed_total") end
function M.released(n) if n > 0 then M.inc("ofauth_webhook_released_total", nil, n) end end
function M.handler_timeout() M.inc("ofauth_webhook_handler_timeouts_total") end
function M.pruned(n) if n > 0 then M.inc("ofauth_webhook_inbox_pruned_total", nil, n) end end
function M.log_suppressed(event) M.inc("ofauth_log_suppressed_total", { "event", event }) end

local function family_of(series)
  local name = series:match("^[%w_]+")
  if M.help[name] then return name end
  local base = name:match("^(.-)_bucket$") or name:match("^(.-)_sum$") or name:match("^(.-)_count$")
  if base and M.help[base] then return base end
  return name
end

local function fmt(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  return ("%.9g"):format(v)
end

--- Prometheus text exposition (version 0.0.4) of every series counted so far.
function M.prometheus()
  local by_family = {}
  for _, k in ipairs(M.dict:keys()) do
    if k:match("^ofauth_") then
      local fam = family_of(k)
      by_family[fam] = by_family[fam] or {}
      table.insert(by_family[fam], k)
    end
  end
  local families = {}
  for fam in pairs(M.help) do families[#families + 1] = fam end
  for fam in pairs(by_family) do
    if not M.help[fam] then families[#families + 1] = fam end
  end
  table.sort(families)
  local out = {}
  for _, fam in ipairs(families) do
    local h = M.help[fam] or { "untyped", fam }
    out[#out + 1] = ("# HELP %s %s"):format(fam, h[2])
    out[#out + 1] = ("# TYPE %s %s"):format(fam, h[1])
    local series = by_family[fam] or {}
    table.sort(series)
    if #series == 0 and h[1] == "counter" then out[#out + 1] = fam .. " 0" end
    for _, s in ipairs(series) do out[#out + 1] = s .. " " .. fmt(M.dict:get(s) or 0) end
  end
  for _, l in ipairs(group_lines()) do out[#out + 1] = l end
  return table.concat(out, "\n") .. "\n"
end

--- A handler for oflua.server / oflua.router serving the text format.
function M.handler()
  return function()
    return 200, M.prometheus(), { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" }
  end
end

return M
