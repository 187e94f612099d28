-- wrk script for bench/webhook.sh: POSTs pre-signed webhook deliveries read
-- from the pool file named by $WEBHOOK_POOL (made by bench/webhook.sh with
-- oflua: one delivery per line, "svix-id<TAB>svix-timestamp<TAB>
-- svix-signature<TAB>body"). wrk cannot compute HMACs fast enough without
-- stealing the servers' CPU, so signatures are computed beforehand, with
-- timestamps valid for the run. Each wrk thread takes every Nth line (no
-- two threads send the same delivery); a thread that reaches the end of its
-- share starts again (repeats: fine for verify-only servers, duplicates for
-- the durable path, so bench/webhook.sh makes that pool large enough).
--   WEBHOOK_POOL=pool.tsv WEBHOOK_PATH=/webhooks/ofauth wrk -s bench/wrk/webhook.lua URL
-- wrk's API is globals: the functions it calls, `wrk`, and what thread:set sets.
-- done() prints "POOL WRAPPED" when any thread started its share again, so
-- bench/webhook.sh can discard a durable-path round that sent duplicates.
-- luacheck: globals setup init request done wrk tid reqs n wrapped
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(_)
  local nthreads = tonumber(os.getenv("WEBHOOK_THREADS") or "2")
  local path = os.getenv("WEBHOOK_PATH") or "/webhooks/ofauth"
  local f = assert(io.open(assert(os.getenv("WEBHOOK_POOL"), "WEBHOOK_POOL is not set"), "rb"))
  reqs = {}
  local i = 0
  for line in f:lines() do
    if i % nthreads == tid then
      local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["svix-id"] = id, ["svix-timestamp"] = ts, ["svix-signature"] = sig,
      }, body)
    end
    i = i + 1
  end
  f:close()
  n = 0
  wrapped = false
end

function request()
  n = n + 1
  if n > #reqs then
    n = 1
    wrapped = true
  end
  return reqs[n]
end

function done()
  for _, t in ipairs(threads) do
    if t:get("wrapped") then
      io.write("POOL WRAPPED\n")
      return
    end
  end
end
