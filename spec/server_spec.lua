-- oflua.server: a real server on an ephemeral loopback port, started in this
-- process (its workers have their own Lua VMs), called with the curl CLI and
-- raw TCP; `oflua serve` as a subprocess.
local h = require("spec.helper")
local cjson = require("cjson")
local core = require("oflua.core")
local server = require("oflua.server")

local FIX = h.source_dir .. "/spec/fixtures/servers/"
local shq = h.shq

local function tmp() return os.tmpname() end

--- curl one request: returns status (number), body, headers (lower-case
-- names; repeated -> array), curl exit code.
local function curl(url, opts)
  opts = opts or {}
  local bodyf, hdrf = tmp(), tmp()
  local cmd = { "curl -sS --max-time 20 -o", shq(bodyf), "-D", shq(hdrf), "-w '%{http_code}'" }
  if opts.method == "HEAD" then cmd[#cmd + 1] = "-I"
  elseif opts.method then cmd[#cmd + 1] = "-X " .. shq(opts.method) end
  for k, v in pairs(opts.headers or {}) do cmd[#cmd + 1] = "-H " .. shq(k .. ": " .. v) end
  local dataf
  if opts.body then
    dataf = h.write_file(tmp(), opts.body)
    cmd[#cmd + 1] = "--data-binary @" .. shq(dataf)
  end
  cmd[#cmd + 1] = shq(url)
  local out, _, code = h.sh(table.concat(cmd, " "))
  local body, raw = h.slurp(bodyf), h.slurp(hdrf)
  if opts.method == "HEAD" then body = body:match("\r\n\r\n(.*)$") end -- -I writes headers to -o
  os.remove(bodyf)
  os.remove(hdrf)
  if dataf then os.remove(dataf) end
  local headers = {}
  for line in raw:gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then
      k = k:lower()
      if headers[k] == nil then headers[k] = v
      elseif type(headers[k]) == "table" then table.insert(headers[k], v)
      else headers[k] = { headers[k], v } end
    end
  end
  return tonumber(out), body, headers, code
end

--- Send raw bytes over TCP (bash /dev/tcp), read the answer for at most
-- `wait` seconds; returns what the server sent back.
local function raw(port, bytes, wait)
  local payload = h.write_file(tmp(), bytes)
  local script = ("exec 3<>/dev/tcp/127.0.0.1/%d || exit 99\ncat %s >&3\ntimeout %s cat <&3\nexit 0")
    :format(port, shq(payload), tostring(wait or 3))
  local out, _, code = h.sh("bash -c " .. shq(script))
  os.remove(payload)
  assert(code == 0, "raw TCP client failed: " .. tostring(code))
  return out
end

--- Poll `pred` until it is truthy (at most `limit` seconds).
local function eventually(pred, limit)
  local deadline = core.monotonic() + (limit or 10)
  while core.monotonic() < deadline do
    local v = pred()
    if v then return v end
    core.sleep(0.01)
  end
  return pred()
end

local n_dicts = 0
local function fresh_name(prefix)
  n_dicts = n_dicts + 1
  return ("%s-%d-%d"):format(prefix, core.getpid(), n_dicts)
end

describe("oflua.server", function()
  local srv, url, dict, dict_name

  setup(function()
    dict_name = fresh_name("spec")
    dict = server.shared(dict_name)
    srv = assert(server.listen({
      script = FIX .. "app.lua", workers = 4, max_body = 4096, max_header = 4096,
      timeout_s = 2, args = { dict = dict_name, nested = { 1, 2.5, true, "x" } },
    }))
    url = srv:url()
  end)

  teardown(function()
    if srv then srv:close() end
  end)

  it("listens on an ephemeral loopback port", function()
    assert.is_true(srv:port() > 0)
    assert.equal("http://127.0.0.1:" .. srv:port(), url)
    assert.matches("oflua.server %(http://127.0.0.1:%d+%)", tostring(srv))
  end)

  it("routes and answers with status, body and headers", function()
    local status, body, headers = curl(url .. "/hello")
    assert.equal(200, status)
    assert.equal("hello", body)
    assert.equal("text/plain", headers["content-type"])
    assert.equal("5", headers["content-length"])
  end)

  it("builds req: method, decoded path and query, raw query, headers, remote address, args", function()
    local status, body = curl(url .. "/req?x=1&y=a+b%21%26&x=2&flag&%3Dk=v%3D&=skip", {
      headers = { ["X-Mixed-Case"] = "Value", ["X-Dup"] = "a" },
    })
    assert.equal(200, status)
    local req = cjson.decode(body)
    assert.equal("GET", req.method)
    assert.equal("/req", req.path)
    assert.equal("x=1&y=a+b%21%26&x=2&flag&%3Dk=v%3D&=skip", req.raw_query)
    assert.same({ x = "2", y = "a b!&", flag = "", ["=k"] = "v=" }, req.query)
    assert.equal("Value", req.headers["x-mixed-case"])
    assert.equal("a", req.headers["x-dup"])
    assert.is_nil(req.headers["X-Mixed-Case"])
    assert.equal("127.0.0.1", req.remote_addr)
    assert.equal("", req.body)
    assert.same({ dict = dict_name, nested = { 1, 2.5, true, "x" } }, req.args)
    assert.is_true(req.worker >= 1 and req.worker <= 4)
  end)

  it("joins repeated request headers with ', '", function()
    local bodyf = tmp()
    local _, _, code = h.sh(("curl -sS --max-time 20 -o %s -H 'X-Dup: a' -H 'X-Dup: b' %s")
      :format(shq(bodyf), shq(url .. "/req")))
    assert.equal(0, code)
    local req = cjson.decode(h.slurp(bodyf))
    os.remove(bodyf)
    assert.equal("a, b", req.headers["x-dup"])
  end)

  it("fills params from :name segments, percent-decoded, from the raw path", function()
    local status, body = curl(url .. "/users/a%20b/posts/42")
    assert.equal(200, status)
    assert.equal("a b|42", body)
  end)

  it("closes the connection without an answer when a handler returns server.DROP", function()
    local _, _, _, code = curl(url .. "/drop")
    assert.equal(52, code) -- curl: empty reply from server
    assert.equal(200, (curl(url .. "/hello")))
  end)

  it("answers 404 for an unknown path and 405 with Allow for a wrong method", function()
    local status, body, headers = curl(url .. "/nope")
    assert.equal(404, status)
    assert.equal("application/json", headers["content-type"])
    assert.same({ error = "not found" }, cjson.decode(body))
    status, body, headers = curl(url .. "/echo")
    assert.equal(405, status)
    assert.equal("POST", headers["allow"])
    assert.same({ error = "method not allowed" }, cjson.decode(body))
    status, body, headers = curl(url .. "/hello", { method = "DELETE" })
    assert.same({ error = "method not allowed" }, cjson.decode(body))
    assert.equal(405, status)
    assert.equal("GET, HEAD", headers["allow"])
  end)

  it("answers HEAD with the GET route's headers and no body", function()
    local status, body, headers = curl(url .. "/hello", { method = "HEAD" })
    assert.equal(200, status)
    assert.equal("", body)
    assert.equal("5", headers["content-length"])
  end)

  it("passes the exact body bytes, binary with NUL included", function()
    local bin = {}
    for i = 0, 255 do bin[#bin + 1] = string.char(i) end
    local payload = table.concat(bin) .. "\0\0end\r\n"
    local status, body, headers = curl(url .. "/echo", { body = payload })
    assert.equal(200, status)
    assert.equal(#payload, #body)
    assert.is_true(payload == body)
    assert.equal(tostring(#payload), headers["x-body-len"])
  end)

  it("passes an empty body as the empty string", function()
    local status, body, headers = curl(url .. "/echo", { method = "POST" })
    assert.equal(200, status)
    assert.equal("", body)
    assert.equal("0", headers["x-body-len"])
  end)

  it("accepts a chunked body within max_body", function()
    local payload = ("0123456789"):rep(300) .. "\0"
    local chunked = { ["Transfer-Encoding"] = "chunked" }
    local status, body = curl(url .. "/echo", { body = payload, headers = chunked })
    assert.equal(200, status)
    assert.is_true(payload == body)
  end)

  it("answers 413 for a Content-Length over max_body without calling the handler", function()
    local status, body = curl(url .. "/echo", { body = ("x"):rep(4097) })
    assert.equal(413, status)
    assert.equal("Payload Too Large\n", body)
    assert.equal(200, (curl(url .. "/echo", { body = ("x"):rep(4096) })))
  end)

  it("answers 413 for a chunked body that grows past max_body", function()
    local chunked = { ["Transfer-Encoding"] = "chunked" }
    local status = curl(url .. "/echo", { body = ("x"):rep(5000), headers = chunked })
    assert.equal(413, status)
  end)

  it("answers 431 for headers over max_header and 414 for a target over it", function()
    assert.equal(200, (curl(url .. "/hello", { headers = { ["X-Big"] = ("a"):rep(3000) } })))
    local status, body = curl(url .. "/hello", { headers = { ["X-Big"] = ("a"):rep(5000) } })
    assert.equal(431, status)
    assert.equal("Request Header Fields Too Large\n", body)
    -- far beyond the per-connection memory: libmicrohttpd answers 431 itself
    assert.equal(431, (curl(url .. "/hello", { headers = { ["X-Big"] = ("a"):rep(60000) } })))
    assert.equal(414, (curl(url .. "/hello?q=" .. ("a"):rep(5000))))
    assert.equal(200, (curl(url .. "/hello")))
  end)

  it("answers 500 with a generic body when a handler throws; the VM stays usable", function()
    for _ = 1, 8 do
      local status, body = curl(url .. "/error")
      assert.equal(500, status)
      assert.equal("Internal Server Error\n", body)
      assert.not_matches("exploded", body)
    end
    for _ = 1, 8 do assert.equal(200, (curl(url .. "/vm"))) end
  end)

  it("answers 500 when a handler returns something that is not a response", function()
    for _, path in ipairs({ "/bad-status", "/bad-body", "/bad-header", "/no-status" }) do
      local status, body, headers = curl(url .. path)
      assert.equal(500, status, path)
      assert.equal("Internal Server Error\n", body)
      assert.is_nil(headers["injected"])
    end
  end)

  it("keeps message framing to itself and sends no body with 204", function()
    local status, body, headers = curl(url .. "/framing")
    assert.equal(200, status)
    assert.equal("abc", body)
    assert.equal("3", headers["content-length"])
    assert.is_nil(headers["transfer-encoding"])
    status, body = curl(url .. "/no-content")
    assert.equal(204, status)
    assert.equal("", body)
  end)

  it("sends repeated response headers from an array value", function()
    local status, _, headers = curl(url .. "/multi")
    assert.equal(201, status)
    assert.same({ "a=1", "b=2" }, headers["set-cookie"])
    assert.equal("7", headers["x-n"])
  end)

  it("keeps state per worker VM and serves concurrent requests on different workers", function()
    -- /hold blocks its worker until /release is called: /release can only be
    -- answered by another worker.
    local out, marker = tmp(), tmp()
    os.remove(marker)
    os.execute(("(curl -sS --max-time 20 %s > %s; echo done > %s) &")
      :format(shq(url .. "/hold"), shq(out), shq(marker)))
    assert.truthy(eventually(function() return dict:get("holding") end))
    local status, other = curl(url .. "/release")
    assert.equal(200, status)
    assert.truthy(eventually(function() return h.slurp(marker) == "done\n" end, 20))
    local held = h.slurp(out)
    os.remove(out)
    os.remove(marker)
    assert.equal(tostring(dict:get("holding")), held)
    assert.not_equal(held, other)
  end)

  it("sums shared-dict increments exactly under concurrency", function()
    local counter = server.shared("counter-" .. dict_name)
    local cmds = {}
    for i = 1, 8 do
      cmds[#cmds + 1] = ("curl -sS --max-time 60 -o /dev/null -w '%%{http_code}\\n' %s > %s.%d &")
        :format(shq(url .. "/incr?n=10000"), "$T", i)
    end
    local script = "T=$(mktemp); " .. table.concat(cmds, " ") .. " wait; cat $T.*; rm -f $T $T.*"
    -- meanwhile this VM increments too
    local out, _, code = h.sh("sh -c " .. shq(script))
    for _ = 1, 5000 do counter:incr("n") end
    assert.equal(0, code)
    assert.equal(("200\n"):rep(8), out)
    assert.equal(8 * 10000 + 5000, counter:get("n"))
    assert.equal(math.type(counter:get("n")), "integer")
  end)

  it("survives malformed requests over raw TCP and keeps serving", function()
    local port = srv:port()
    local cases = {
      "GET /hello HTTP/1.1\r\nHost: x\r\nX-Trunc", -- truncated headers, then close
      "\0\1\2garbage garbage\r\n\r\n", -- garbage request line
      "GET\r\n\r\n",
      "GET /hello HTTP/9.9\r\nHost: x\r\n\r\n",
      "GET /hello HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nabc",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", -- short body, close
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "3\r\nabc\r\n0\r\n\r\n",
      "GET /" .. ("a"):rep(70000) .. " HTTP/1.1\r\n\r\n",
      ("X"):rep(70000),
    }
    for _, bytes in ipairs(cases) do
      local answer = raw(port, bytes, 2)
      -- a 4xx (or 505 for the unknown version) or a closed connection, never a crash
      assert.not_matches("^HTTP/1%.%d 50[0-4]", answer)
    end
    local status, body = curl(url .. "/hello")
    assert.equal(200, status)
    assert.equal("hello", body)
    -- two pipelined requests on one connection are both answered
    local answer = raw(port, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n"
      .. "Connection: close\r\n\r\n", 5)
    assert.equal(2, select(2, answer:gsub("HTTP/1.1 200", "")))
    -- every request has been accounted for
    assert.truthy(eventually(function() return srv:stats().inflight == 0 end))
  end)

  it("closes a connection whose client is too slow (timeout_s)", function()
    local script = ("exec 3<>/dev/tcp/127.0.0.1/%d || exit 99\nprintf 'GET /hello HTTP/1.1\\r\\nHo' >&3\n"
      .. "timeout 15 cat <&3; echo \"rc=$?\"")
      :format(srv:port())
    local out = h.sh("bash -c " .. shq(script))
    assert.matches("rc=0", out) -- the server closed it (124 would mean it kept waiting)
  end)

  it("logs a handler error as one JSON line, without the request's secrets", function()
    local script = h.write_file(tmp() .. ".lua", ([[
      local server = require("oflua.server")
      local srv = assert(server.listen({ script = %q, workers = 1 }))
      local p = io.popen("curl -sS -o /dev/null -H 'Authorization: Bearer sk_live_SECRET' '"
        .. srv:url() .. "/error?token=QUERYSECRET'")
      p:close()
      srv:close()
    ]]):format(FIX .. "app.lua"))
    local _, err, code = h.oflua({ script })
    os.remove(script)
    assert.equal(0, code)
    local lines = {}
    for line in err:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(1, #lines)
    local entry = cjson.decode(lines[1])
    assert.equal("error", entry.level)
    assert.equal("handler_error", entry.event)
    assert.equal(1, entry.worker)
    assert.matches("handler exploded", entry.error)
    assert.matches("stack traceback", entry.error)
    assert.not_matches("SECRET", err)
  end)
end)

describe("oflua.server handler scripts", function()
  it("accepts an object with a handle method", function()
    local srv = assert(server.listen({ script = FIX .. "object.lua", workers = 1 }))
    local status, body = curl(srv:url() .. "/x")
    srv:close()
    assert.equal(200, status)
    assert.equal("hi /x", body)
  end)

  it("reports a syntax error, a load error or a non-handler from listen", function()
    local broken = h.write_file(tmp() .. ".lua", "return function(\nreturn 200 end\n")
    local srv, err = server.listen({ script = broken })
    os.remove(broken)
    assert.is_nil(srv)
    assert.matches(broken .. ":2:", err, 1, true)
    srv, err = server.listen({ script = FIX .. "throws.lua" })
    assert.is_nil(srv)
    assert.matches("missing configuration", err)
    srv, err = server.listen({ script = FIX .. "notahandler.lua" })
    assert.is_nil(srv)
    assert.matches("must return a handler", err)
    srv, err = server.listen({ script = "/nonexistent/app.lua" })
    assert.is_nil(srv)
    assert.matches("/nonexistent/app.lua", err)
  end)

  it("takes a body of exactly the default max_body (1 MiB) and refuses one byte more", function()
    local srv = assert(server.listen({ script = FIX .. "app.lua", args = { dict = fresh_name("big") } }))
    local f = assert(io.open("/dev/urandom", "rb"))
    local payload = f:read(1048576)
    f:close()
    local expect = { Expect = "100-continue" }
    local status, body = curl(srv:url() .. "/echo", { body = payload, headers = expect })
    assert.equal(200, status)
    assert.is_true(body == payload)
    status = curl(srv:url() .. "/echo", { body = payload .. "x", headers = expect })
    assert.equal(413, status)
    local chunked = { ["Transfer-Encoding"] = "chunked" }
    status = curl(srv:url() .. "/echo", { body = payload .. "x", headers = chunked })
    assert.equal(413, status)
    srv:close()
  end)

  it("refuses args that cannot cross to another VM", function()
    local srv, err = server.listen({ script = FIX .. "hello.lua", args = { f = print } })
    assert.is_nil(srv)
    assert.matches("cannot pass a function", err)
    local cyc = {}
    cyc.self = cyc
    srv, err = server.listen({ script = FIX .. "hello.lua", args = cyc })
    assert.is_nil(srv)
    assert.matches("nested too deep", err)
  end)

  it("keeps script and host alive when the options come from an __index metamethod", function()
    -- fresh strings that only the listen call holds; every other lookup collects garbage
    local opts = setmetatable({}, { __index = function(_, k)
      if k == "script" then return table.concat({ FIX, "hello", ".lua" }) end
      if k == "host" then return ("%d.%d.%d.%d"):format(127, 0, 0, 1) end
      collectgarbage()
      collectgarbage()
      return nil
    end })
    local srv = assert(server.listen(opts))
    assert.matches("^http://127%.0%.0%.1:%d+$", srv:url())
    assert.equal(200, (curl(srv:url() .. "/")))
    srv:close()
  end)

  it("rejects bad options as programmer errors", function()
    assert.has_error(function() server.listen({ script = FIX .. "hello.lua", prot = 1 }) end,
      "server.listen: unknown option 'prot'")
    assert.has_error(function() server.listen({ script = FIX .. "hello.lua", workers = 0 }) end)
    assert.has_error(function() server.listen({}) end)
    assert.has_error(function() server.listen("x") end)
  end)

  it("reports a port already in use", function()
    local a = assert(server.listen({ script = FIX .. "hello.lua", workers = 1 }))
    local b, err = server.listen({ script = FIX .. "hello.lua", workers = 1, port = a:port() })
    local port = a:port()
    a:close()
    assert.is_nil(b)
    assert.matches("cannot listen on 127.0.0.1:" .. port, err, 1, true)
  end)
end)

describe("oflua.server tick", function()
  it("runs the script's tick in a background VM until the server stops", function()
    local name = fresh_name("tick")
    local dict = server.shared(name)
    local srv = assert(server.listen({ script = FIX .. "ticker.lua", workers = 2, args = { dict = name } }))
    assert.truthy(eventually(function() return (dict:get("ticks") or 0) >= 3 end))
    assert.equal(0, dict:get("tick_worker"))
    -- on a thread of its own name (top -H, perf)
    assert.equal("oflua-tick", dict:get("tick_comm"))
    assert.is_true(srv:stop(1))
    local after = dict:get("ticks")
    core.sleep(0.1)
    assert.equal(after, dict:get("ticks"))
    assert.equal(3, dict:get("shutdowns")) -- two workers and the tick VM
    srv:close()
  end)

  it("keeps ticking after a tick raises (the error is logged)", function()
    local name = fresh_name("tickfail")
    local dict = server.shared(name)
    local srv = assert(server.listen({ script = FIX .. "ticker.lua", workers = 1,
      args = { dict = name, fail = true } }))
    assert.truthy(eventually(function() return (dict:get("ticks") or 0) >= 3 end))
    srv:close()
  end)

  it("lets a long tick see that the server is stopping (server.stopping)", function()
    local name = fresh_name("stopping")
    local dict = server.shared(name)
    assert.is_false(server.stopping()) -- outside a server VM
    local srv = assert(server.listen({ script = FIX .. "stopping_tick.lua", workers = 1, grace_s = 10,
      args = { dict = name } }))
    assert.truthy(eventually(function() return dict:get("ticking") end))
    local status, body = curl(srv:url() .. "/")
    assert.same({ 200, "false" }, { status, body })
    -- the tick ends by itself once stop begins: stop does not abandon it
    -- (it would loop until the 10 s grace ends, without saw_stop)
    srv:stop()
    assert.is_true(dict:get("saw_stop"))
    srv:close()
  end)

  it("refuses a bad tick_interval with the script's name", function()
    local script = h.write_file(os.tmpname() .. ".lua",
      "return {handler = function() return 200 end, tick = function() end, tick_interval = -1}")
    local srv, err = server.listen({ script = script, workers = 1 })
    os.remove(script)
    assert.is_nil(srv)
    assert.matches("tick_interval must be", err, 1, true)
  end)
end)

describe("oflua.server stop", function()
  it("finishes a request in flight, runs shutdown hooks, then refuses connections", function()
    local name = fresh_name("stop")
    local dict = server.shared(name)
    local srv = assert(server.listen({ script = FIX .. "app.lua", workers = 2, args = { dict = name } }))
    local url = srv:url()
    local out, marker = tmp(), tmp()
    os.remove(marker)
    os.execute(("(curl -sS --max-time 20 -w ' %%{http_code}' %s > %s; echo done > %s) &")
      :format(shq(url .. "/slow"), shq(out), shq(marker)))
    assert.truthy(eventually(function() return dict:get("slow_started") end))
    assert.is_true(srv:stop(5))
    assert.is_true(srv:wait(0))
    assert.truthy(eventually(function() return h.slurp(marker) == "done\n" end, 20))
    assert.equal("slow done 200", h.slurp(out))
    os.remove(out)
    os.remove(marker)
    assert.equal(2, dict:get("shutdowns"))
    local _, _, _, code = curl(url .. "/hello")
    assert.equal(7, code) -- curl: could not connect
    assert.is_true(srv:stop()) -- idempotent
    srv:close()
    srv:close()
    assert.has_error(function() srv:port() end, "server is closed")
  end)

  it("counts the parked handlers a stop cuts past its grace as handler timeouts", function()
    -- three handlers parked for 100 s; stop's grace (0.3 s) answers them 503
    -- and the workers then cut them: each is counted once
    local srv = assert(server.listen({ script = FIX .. "late_sleep.lua", workers = 2, handler_timeout = 60 }))
    os.execute(("curl -s -Z --parallel-immediate --parallel-max 3 -o /dev/null %s >/dev/null 2>&1 &")
      :format(shq(srv:url() .. "/[1-3]?t=100")))
    assert.truthy(eventually(function() return srv:stats().inflight == 3 end, 10))
    srv:stop(0.3)
    assert.equal(3, srv:stats().handler_timeouts)
    srv:close()
  end)

  it("finishes each parked handler once when its wait completes as its deadline passes", function()
    -- handler_timeout 0.1 s, each handler parks for 0.1 s + about 1 ms: the
    -- worker abandons a late parked job just as its timer completes it. Both
    -- must not finish it (a double free under ASan, lost parked jobs), on
    -- the run and on stop with handlers parked.
    local srv = assert(server.listen({ script = FIX .. "late_sleep.lua", workers = 2, handler_timeout = 0.1 }))
    local codes = h.sh(("curl -s -Z --parallel-max 24 -o /dev/null -w '%%{http_code}\n' %s")
      :format(shq(srv:url() .. "/[1-400]?t=0.1")))
    local n, other = 0, {}
    for c in codes:gmatch("%d+") do
      n = n + 1
      if c ~= "200" and c ~= "503" then other[#other + 1] = c end
    end
    assert.equal(400, n)
    assert.same({}, other)
    assert.is_true(srv:stats().handler_timeouts > 0)
    -- stop while handlers are parked near their deadline
    os.execute(("curl -s -Z --parallel-max 24 -o /dev/null %s >/dev/null 2>&1 &")
      :format(shq(srv:url() .. "/[1-100]?t=0.1")))
    eventually(function() return srv:stats().inflight > 0 end, 5)
    core.sleep(0.1)
    assert.is_true(srv:stop(0.1))
    srv:close()
  end)

  it("cuts a shutdown hook that does not return", function()
    local srv = assert(server.listen({ script = FIX .. "slow_shutdown.lua", workers = 1 }))
    assert.equal(200, (curl(srv:url() .. "/")))
    assert.is_true(srv:stop(0)) -- the hook is cut after its time limit (2 s)
    srv:close()
  end)

  it("wait returns false when the timeout passes first", function()
    local srv = assert(server.listen({ script = FIX .. "hello.lua", workers = 1 }))
    assert.is_false(srv:wait(0.05))
    do
      local closing <close> = srv
      assert.equal(200, (curl(closing:url() .. "/")))
    end
    assert.is_true(srv:wait())
  end)
end)

describe("server.shared", function()
  local d
  before_each(function() d = server.shared(fresh_name("dict")) end)

  it("gets and sets strings, integers, floats and booleans", function()
    assert.is_nil(d:get("k"))
    assert.is_true(d:set("s", "a\0b"))
    assert.is_true(d:set("i", 42))
    assert.is_true(d:set("f", 2.0))
    assert.is_true(d:set("t", true))
    assert.is_true(d:set("F", false))
    assert.equal("a\0b", d:get("s"))
    assert.equal("integer", math.type(d:get("i")))
    assert.equal("float", math.type(d:get("f")))
    assert.is_true(d:get("t"))
    assert.is_false(d:get("F"))
    local big = ("x"):rep(10000)
    d:set("s", big)
    assert.equal(big, d:get("s"))
    d:set("s", nil)
    assert.is_nil(d:get("s"))
    assert.has_error(function() d:set("x", {}) end)
    assert.has_error(function() d:get() end)
  end)

  it("increments atomically with a step and an initial value", function()
    assert.equal(1, d:incr("n"))
    assert.equal(11, d:incr("n", 10))
    assert.equal(105, d:incr("m", 5, 100))
    assert.equal(1.5, d:incr("x", 0.5, 1))
    d:set("s", "text")
    local v, err = d:incr("s")
    assert.is_nil(v)
    assert.equal("not a number", err)
  end)

  it("adds only when absent, deletes, lists keys", function()
    assert.is_true(d:add("a", 1))
    assert.is_false(d:add("a", 2))
    assert.equal(1, d:get("a"))
    d:set("b", "x")
    local keys = d:keys()
    table.sort(keys)
    assert.same({ "a", "b" }, keys)
    d:delete("a")
    d:delete("missing")
    assert.same({ "b" }, d:keys())
  end)

  it("is the same dictionary for the same name", function()
    local name = fresh_name("same")
    server.shared(name):set("k", "v")
    assert.equal("v", server.shared(name):get("k"))
  end)

  it("answers nil, 'no memory' when full and recovers after a delete", function()
    local small = server.shared(fresh_name("small"), { size = 4096 })
    local ok, err = small:set("big", ("x"):rep(5000))
    assert.is_nil(ok)
    assert.equal("no memory", err)
    local n = 0
    while small:set("k" .. n, ("y"):rep(100)) do n = n + 1 end
    assert.is_true(n > 10)
    local m = 0
    while small:set("t" .. m, true) do m = m + 1 end
    assert.same({ nil, "no memory" }, { small:incr("new") })
    assert.same({ nil, "no memory" }, { small:add("new", 1) })
    small:delete("k0")
    assert.equal(1, small:incr("new"))
    for i = 1, 200 do small:delete("k" .. i) end
    assert.is_true(small:set("again", ("z"):rep(1000)))
  end)

  it("grows past its initial table size", function()
    local big = server.shared(fresh_name("big"), { size = 4 << 20 })
    for i = 1, 5000 do assert(big:set("key" .. i, i)) end
    assert.equal(5000, #big:keys())
    for i = 1, 5000 do assert.equal(i, big:get("key" .. i)) end
  end)
end)

describe("oflua serve", function()
  --- Runs `oflua serve ARGS` in the background, sends requests with curl, then
  -- the signal; returns the server's stdout, stderr, exit status and the
  -- responses' bodies.
  local function serve(args, sig, paths)
    local out, err = tmp(), tmp()
    local parts = {}
    for _, a in ipairs(args) do parts[#parts + 1] = shq(a) end
    local reqs = {}
    for _, p in ipairs(paths) do
      reqs[#reqs + 1] = ("curl -sS --max-time 10 \"$url\"%s; echo"):format(shq(p))
    end
    local script = table.concat({
      ("%s serve %s >%s 2>%s &"):format(shq(h.bin), table.concat(parts, " "), shq(out), shq(err)),
      "pid=$!",
      ("for i in $(seq 200); do grep -q listening %s && break; sleep 0.05; done"):format(shq(out)),
      ("url=$(sed -n 's/^listening on //p' %s)"):format(shq(out)),
      table.concat(reqs, "\n"),
      "kill -" .. sig .. " $pid",
      "wait $pid; echo \"exit=$?\"",
    }, "\n")
    local responses = h.sh("bash -c " .. shq(script))
    local o, e = h.slurp(out), h.slurp(err)
    os.remove(out)
    os.remove(err)
    return o, e, responses
  end

  it("serves an app, prints its URL and exits 0 on SIGTERM", function()
    local out, err, responses = serve({ FIX .. "hello.lua", "--port", "0", "--workers", "2" },
      "TERM", { "/", "/x" })
    assert.matches("^listening on http://127%.0%.0%.1:%d+\n$", out)
    assert.equal("ok\nok\nexit=0\n", responses)
    assert.equal("", err)
  end)

  it("stops gracefully on SIGINT and passes the arguments after the script", function()
    local out, _, responses = serve({ FIX .. "args.lua", "-p", "0", "--max-body", "10", "--", "a", "b c" },
      "INT", { "/" })
    assert.matches("^listening on", out)
    assert.equal('["a","b c"]\nexit=0\n', responses)
  end)

  it("has --help", function()
    local out, _, code = h.oflua({ "serve", "--help" })
    assert.equal(0, code)
    assert.matches("usage: oflua serve [options] APP.lua", out, 1, true)
  end)

  it("reports a missing script, a bad script and bad options in one line", function()
    local _, err, code = h.oflua({ "serve" })
    assert.equal(2, code) -- usage errors: exit status 2, a pointer to --help
    assert.equal("oflua serve: missing the app script\nRun 'oflua serve --help' for usage.\n", err)
    _, err, code = h.oflua({ "serve", "/nonexistent.lua" })
    assert.equal(1, code)
    assert.matches("^oflua serve: /nonexistent.lua: No such file", err)
    local broken = h.write_file(tmp() .. ".lua", "return function(\nreturn 200 end\n")
    _, err, code = h.oflua({ "serve", broken, "--port", "0" })
    os.remove(broken)
    assert.equal(1, code)
    assert.matches("oflua serve: " .. broken .. ":2: ", err, 1, true)
    assert.equal(1, select(2, err:gsub("\n", "")))
    _, err, code = h.oflua({ "serve", FIX .. "hello.lua", "--port", "70000" })
    assert.equal(2, code)
    assert.equal("oflua serve: option --port must be between 0 and 65535, got 70000\n"
      .. "Run 'oflua serve --help' for usage.\n", err)
  end)
end)
