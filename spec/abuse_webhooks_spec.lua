-- The webhook abuse corpus (spec/fixtures/abuse/webhooks.lua) against a real
-- receiver: oflua.server on an ephemeral loopback port in this process,
-- running ofauth.webhooks.app over oflua.store (the in-memory fake store
-- with one worker until oflua.store is there). Every abusive delivery gets
-- its 4xx (500 for our own bad secret), the log names the reason, no handler
-- runs, and the server keeps serving: valid deliveries afterwards are
-- accepted and handled exactly once.
local h = require("spec.helper")
local cjson = require("cjson")
local core = require("oflua.core")
local http = require("oflua.http")
local server = require("oflua.server")
local C = require("spec.fixtures.abuse.webhooks")
local render = require("spec.fixtures.abuse.render")

local has_store = type(require("oflua.store").open) == "function"

local function send(url, req)
  return http.request({
    method = req.method, url = url .. req.path, headers = req.headers,
    body = req.method ~= "GET" and req.body or nil, timeout_ms = 10000,
  })
end

describe("webhook abuse corpus", function()
  local srv, url, dict, tmpdir, store_args
  local seen_logs = 0

  -- Log lines written since the last call, decoded.
  local function new_logs()
    local out = {}
    local n = tonumber(dict:get("log_n")) or 0
    for i = seen_logs + 1, n do out[#out + 1] = cjson.decode(dict:get("log" .. i)) end
    seen_logs = n
    return out
  end

  -- Handlers run after the answer (the server's tick): wait until the inbox
  -- holds nothing pending or claimed before counting handler runs.
  local function settled()
    if not has_store then return end
    local st <close> = assert(require("oflua.store").open(store_args))
    local deadline = core.monotonic() + 20
    repeat
      local s = assert(st:inbox_stats())
      if s.pending == 0 and s.claimed == 0 then return end
      core.sleep(0.01)
    until core.monotonic() > deadline
    error("the inbox did not settle: " .. cjson.encode(st:inbox_stats()))
  end

  setup(function()
    local name = ("abuse-%d-%d"):format(core.getpid(), math.floor(core.monotonic() * 1000))
    dict = server.shared(name)
    -- every rejection is logged here (the log rate limit has its own spec)
    local args = { dict = name, source_dir = h.source_dir, now = C.now, reject_log_lines = 1000 }
    if has_store then
      tmpdir = os.tmpname()
      os.remove(tmpdir)
      assert(os.execute("mkdir -m 700 " .. h.shq(tmpdir)))
      args.store = { path = tmpdir .. "/store.db", key = require("oflua.store").keygen() }
      store_args = args.store
    end
    srv = assert(server.listen({
      script = h.source_dir .. "/spec/fixtures/abuse/receiver.lua", workers = has_store and 2 or 1,
      max_body = C.server_max_body, max_header = 16384, timeout_s = 5, args = args,
    }))
    url = srv:url()
  end)

  teardown(function()
    if srv then srv:close() end
    if tmpdir then os.execute("rm -rf " .. h.shq(tmpdir)) end
  end)

  for i, req in ipairs(render.all()) do
    it(("refuses: %s -> %d"):format(req.name, req.status), function()
      local calls = dict:get("calls")
      local resp, err = send(url, req)
      assert.is_table(resp, tostring(err))
      assert.equal(req.status, resp.status, resp.body)
      local logs = new_logs()
      if req.reason then
        local body = cjson.decode(resp.body)
        assert.equal(req.reason, body.error)
        local found
        for _, l in ipairs(logs) do
          if l.event == "webhook.rejected" then found = l end
        end
        assert.is_table(found, "no webhook.rejected log line for case " .. i)
        assert.equal(req.reason, found.reason)
        assert.equal(req.reason == "bad_secret" and "error" or "warn", found.level)
      end
      assert.equal(calls, dict:get("calls"), "a handler ran")
    end)
  end

  it("still serves: valid deliveries are accepted and handled exactly once", function()
    settled()
    assert.is_nil(dict:get("calls"), "a handler ran for an abusive delivery")
    for i, case in ipairs(C.valid) do
      local req = render.request(case, 1000 + i)
      local resp = assert(send(url, req))
      assert.equal(200, resp.status, req.name .. ": " .. resp.body)
      assert.equal("accepted", cjson.decode(resp.body).status, req.name)
      -- handlers run after the answer (the server's tick)
      local deadline = core.monotonic() + 20
      while dict:get("calls") ~= i and core.monotonic() < deadline do core.sleep(0.01) end
      assert.equal(i, dict:get("calls"), req.name)
      -- the same delivery again: acknowledged as a duplicate, not handled again
      resp = assert(send(url, req))
      assert.equal(200, resp.status)
      assert.equal("duplicate", cjson.decode(resp.body).status, req.name)
      settled()
      assert.equal(i, dict:get("calls"), req.name)
    end
    local keys = 0
    for _, k in ipairs(dict:keys()) do
      if k:match("^handled:") then
        keys = keys + 1
        assert.equal(1, dict:get(k), k)
      end
    end
    assert.equal(#C.valid, keys)
  end)

  it("keeps the secret and connection ids out of every log line", function()
    for i = 1, tonumber(dict:get("log_n")) or 0 do
      local line = dict:get("log" .. i)
      assert.is_nil(line:find(C.secret, 1, true))
      assert.is_nil(line:find(C.secret:sub(7), 1, true))
      assert.is_nil(line:find("conn_abuse000", 1, true))
    end
  end)
end)
