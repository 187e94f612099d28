-- oflua.http against a local plain-socket fixture server
-- (spec/c/http_fixture_server.c, built as build/http_fixture_server), started
-- on an ephemeral 127.0.0.1 port and killed at teardown; it also stops by
-- itself after 120 s. Nothing here leaves the machine.
local http = require("oflua.http")
local h = require("spec.helper")

local build_dir = os.getenv("OFLUA_BUILD_DIR") or (h.source_dir .. "/build")
local server_bin = build_dir .. "/http_fixture_server"

local function start_server(args)
  local pipe = assert(io.popen("exec " .. h.shq(server_bin) .. " " .. (args or "120"), "r"))
  local line = pipe:read("l")
  assert(line, "fixture server did not start: " .. server_bin)
  local port, pid = line:match("^(%d+) (%d+)$")
  assert(port, "unexpected fixture output: " .. line)
  return { pipe = pipe, port = port, pid = pid, url = "http://127.0.0.1:" .. port }
end

local function stop_server(s)
  if s then
    os.execute("kill " .. s.pid .. " 2>/dev/null")
    s.pipe:close()
  end
end

local function closed_port()
  local out = h.sh(h.shq(server_bin) .. " --closed-port")
  return assert(out:match("^(%d+)"))
end

-- The echoed request (from /echo) split into request line, headers, body.
local function parse_echo(body)
  local head, rest = body:match("^(.-)\r\n\r\n(.*)$")
  local lines = {}
  for l in (head .. "\r\n"):gmatch("(.-)\r\n") do lines[#lines + 1] = l end
  local req = { line = table.remove(lines, 1), headers = {}, list = {}, body = rest }
  for _, l in ipairs(lines) do
    local name, value = l:match("^([^:]+):%s*(.-)%s*$")
    req.list[#req.list + 1] = { name:lower(), value }
    req.headers[name:lower()] = value
  end
  return req
end

local function assert_err(kind, resp, err)
  assert.is_nil(resp)
  assert.is_table(err)
  assert.equal(kind, err.kind, tostring(err))
  assert.is_string(err.message)
  assert.equal(kind .. ": " .. err.message, tostring(err))
  return err
end

describe("oflua.http", function()
  local srv
  lazy_setup(function() srv = start_server() end)
  lazy_teardown(function() stop_server(srv) end)

  it("keeps curl_version and documented defaults in the module table", function()
    assert.matches("^%d+%.%d+", http.curl_version)
    assert.equal(16 * 1024 * 1024, http.defaults.max_body)
    assert.equal(30000, http.defaults.timeout_ms)
    assert.equal(10000, http.defaults.connect_timeout_ms)
  end)

  describe("request", function()
    it("returns status, body and lower-cased headers", function()
      local resp, err = http.request({ url = srv.url .. "/hello" })
      assert.is_nil(err)
      assert.equal(200, resp.status)
      assert.equal("hello", resp.body)
      assert.equal("text/plain", resp.headers["content-type"])
      assert.equal("5", resp.headers["content-length"])
      assert.is_nil(resp.headers["Content-Type"])
    end)

    it("reuses the keep-alive connection across calls", function()
      local a = assert(http.request({ url = srv.url .. "/hello" }))
      local b = assert(http.request({ url = srv.url .. "/echo", method = "PUT", body = "x" }))
      local c = assert(http.request({ url = srv.url .. "/status/404" }))
      assert.equal(a.headers["x-conn"], b.headers["x-conn"])
      assert.equal(a.headers["x-conn"], c.headers["x-conn"])
    end)

    it("sends a POST on a fresh connection unless reuse = true", function()
      local a = assert(http.request({ url = srv.url .. "/hello" }))
      local b = assert(http.request({ url = srv.url .. "/echo", method = "POST", body = "x" }))
      local c = assert(http.request({ url = srv.url .. "/echo", method = "PATCH", body = "x" }))
      assert.are_not.equal(a.headers["x-conn"], b.headers["x-conn"])
      assert.are_not.equal(b.headers["x-conn"], c.headers["x-conn"])
      local d = assert(http.request({ url = srv.url .. "/echo", method = "POST", body = "y", reuse = true }))
      local e = assert(http.request({ url = srv.url .. "/echo", method = "POST", body = "z", reuse = true }))
      assert.equal(d.headers["x-conn"], e.headers["x-conn"])
      assert.has_error(function() http.request({ url = srv.url, reuse = "yes" }) end)
    end)

    it("sends method, headers and body exactly", function()
      local body = "bin\0ary\r\n\255 body"
      local resp = assert(http.request({
        url = srv.url .. "/echo", method = "PUT", body = body,
        headers = { ["X-One"] = "1", ["X-Num"] = 42, ["X-Rep"] = { "a", "b" }, ["X-Empty"] = "",
          ["Content-Type"] = "application/json" },
      }))
      local req = parse_echo(resp.body)
      assert.equal("PUT /echo HTTP/1.1", req.line)
      assert.equal(body, req.body)
      assert.equal(tostring(#body), req.headers["content-length"])
      assert.equal("1", req.headers["x-one"])
      assert.equal("42", req.headers["x-num"])
      assert.equal("", req.headers["x-empty"])
      assert.equal("application/json", req.headers["content-type"])
      assert.is_nil(req.headers["expect"])
      local reps = {}
      for _, kv in ipairs(req.list) do
        if kv[1] == "x-rep" then reps[#reps + 1] = kv[2] end
      end
      assert.same({ "a", "b" }, reps)
    end)

    it("adds no form Content-Type and no Expect to a POST body", function()
      local req = parse_echo(assert(http.request({ url = srv.url .. "/echo", method = "POST",
        body = ("x"):rep(200000) })).body)
      assert.equal("POST /echo HTTP/1.1", req.line)
      assert.is_nil(req.headers["content-type"])
      assert.is_nil(req.headers["expect"])
      assert.equal(200000, #req.body)
      assert.matches("^oflua/", req.headers["user-agent"])
    end)

    it("sends Content-Length: 0 for POST, PUT and PATCH without a body", function()
      for _, m in ipairs({ "POST", "PUT", "PATCH" }) do
        local req = parse_echo(assert(http.request({ url = srv.url .. "/echo", method = m })).body)
        assert.equal(m .. " /echo HTTP/1.1", req.line)
        assert.equal("0", req.headers["content-length"])
      end
      local req = parse_echo(assert(http.request({ url = srv.url .. "/echo", method = "DELETE" })).body)
      assert.equal("DELETE /echo HTTP/1.1", req.line)
      assert.is_nil(req.headers["content-length"])
    end)

    it("carries no option over from one request to the next (handles are reused)", function()
      local function echo(req)
        req.url = srv.url .. "/echo"
        return parse_echo(assert(http.request(req)).body)
      end
      echo({ method = "PATCH", body = "b", headers = { ["X-Once"] = "1", ["Content-Type"] = "x/y" } })
      local req = echo({})
      assert.equal("GET /echo HTTP/1.1", req.line)
      assert.is_nil(req.headers["content-length"])
      assert.is_nil(req.headers["x-once"])
      assert.is_nil(req.headers["content-type"])
      assert.equal("", req.body)
      assert.equal(200, assert(http.request({ url = srv.url .. "/hello", method = "HEAD" })).status)
      assert.equal("hello", assert(http.request({ url = srv.url .. "/hello" })).body)
      local followed = assert(http.request({ url = srv.url .. "/redirect", follow_redirects = true }))
      assert.equal(200, followed.status)
      assert.equal(302, assert(http.request({ url = srv.url .. "/redirect" })).status)
      local _, err = http.request({ url = srv.url .. "/huge/2000", max_body = 1000 })
      assert.equal("too_large", err.kind)
      assert.equal(2000, #assert(http.request({ url = srv.url .. "/huge/2000" })).body)
    end)

    it("honours the proxy environment variables", function()
      local out, err, code = h.oflua({ "-e", [[
        local r = assert(require("oflua.http").request({ url = "http://proxied.invalid/echo" }))
        io.write(r.body:match("^[^\r]*"))]] },
        { env = { http_proxy = srv.url, no_proxy = "", NO_PROXY = "" } })
      assert.equal(0, code, err)
      assert.equal("GET http://proxied.invalid/echo HTTP/1.1", out)
    end)

    it("lets the caller replace the User-Agent", function()
      local req = parse_echo(assert(http.request({ url = srv.url .. "/echo",
        headers = { ["user-agent"] = "mine/1" } })).body)
      assert.equal("mine/1", req.headers["user-agent"])
    end)

    it("answers HEAD with headers and no body", function()
      local resp = assert(http.request({ url = srv.url .. "/hello", method = "HEAD" }))
      assert.equal(200, resp.status)
      assert.equal("", resp.body)
      assert.equal("5", resp.headers["content-length"])
      -- and the connection is still fine afterwards
      assert.equal("hello", assert(http.request({ url = srv.url .. "/hello" })).body)
    end)

    it("returns HTTP error statuses as responses", function()
      for _, status in ipairs({ 400, 401, 404, 429, 500, 503 }) do
        local resp, err = http.request({ url = srv.url .. "/status/" .. status })
        assert.is_nil(err)
        assert.equal(status, resp.status)
        assert.equal("status " .. status, resp.body)
      end
    end)

    it("joins repeated headers and keeps every line in header_list", function()
      local resp = assert(http.request({ url = srv.url .. "/headers" }))
      assert.equal("one, two", resp.headers["x-multi"])
      assert.equal("a=1; Path=/, b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
        resp.headers["set-cookie"])
      assert.equal("Yes", resp.headers["x-mixed-case"])
      assert.equal("", resp.headers["x-empty"])
      assert.equal("padded value", resp.headers["x-spaces"])
      local cookies, names = {}, {}
      for _, kv in ipairs(resp.header_list) do
        names[#names + 1] = kv[1]
        if kv[1] == "set-cookie" then cookies[#cookies + 1] = kv[2] end
      end
      assert.same({ "a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT" }, cookies)
      assert.same({ "x-conn", "content-length", "set-cookie", "set-cookie", "x-multi",
        "x-mixed-case", "x-multi", "x-empty", "x-spaces" }, names)
    end)

    it("keeps only the final response's headers after a 1xx", function()
      local resp = assert(http.request({ url = srv.url .. "/early-hints" }))
      assert.equal(200, resp.status)
      assert.equal("final", resp.body)
      assert.equal("yes", resp.headers["x-final"])
      assert.is_nil(resp.headers["link"])
    end)

    it("does not follow redirects unless asked", function()
      local resp = assert(http.request({ url = srv.url .. "/redirect" }))
      assert.equal(302, resp.status)
      assert.equal("/hello", resp.headers["location"])
      resp = assert(http.request({ url = srv.url .. "/redirect", follow_redirects = true }))
      assert.equal(200, resp.status)
      assert.equal("hello", resp.body)
      assert.is_nil(resp.headers["location"])
    end)

    describe("follow_redirects", function()
      local secret_headers = { apikey = "k_test_not_real", ["x-connection-id"] = "conn_test",
        accept = "application/json", ["user-agent"] = "spec" }

      it("keeps the request's headers on the same origin", function()
        local resp = assert(http.request({ url = srv.url .. "/goto/302/" .. srv.url .. "/echo",
          headers = secret_headers, follow_redirects = true }))
        local req = parse_echo(resp.body)
        assert.equal("k_test_not_real", req.headers["apikey"])
        assert.equal("conn_test", req.headers["x-connection-id"])
      end)

      it("drops apikey and x-connection-id when the host changes", function()
        -- 127.0.0.1 -> localhost: another host name, the same fixture server
        local other = "http://localhost:" .. srv.port .. "/echo"
        local resp = assert(http.request({ url = srv.url .. "/goto/302/" .. other,
          headers = secret_headers, follow_redirects = true }))
        assert.equal(200, resp.status)
        local req = parse_echo(resp.body)
        assert.matches("^localhost:", req.headers["host"])
        assert.is_nil(req.headers["apikey"])
        assert.is_nil(req.headers["x-connection-id"])
        assert.equal("application/json", req.headers["accept"])
        assert.equal("spec", req.headers["user-agent"])
        -- and stay dropped when a later hop comes back to the first host
        local back = "http://localhost:" .. srv.port .. "/goto/307/" .. srv.url .. "/echo"
        req = parse_echo(assert(http.request({ url = srv.url .. "/goto/302/" .. back,
          headers = secret_headers, follow_redirects = true })).body)
        assert.is_nil(req.headers["apikey"])
      end)

      it("turns a POST into a GET on 302 and 303 and repeats it on 307 and 308", function()
        for code, want in pairs({ [301] = "GET", [302] = "GET", [303] = "GET", [307] = "POST", [308] = "POST" }) do
          local resp = assert(http.request({ url = srv.url .. "/goto/" .. code .. "/" .. srv.url .. "/echo",
            method = "POST", body = "payload", follow_redirects = true }))
          local req = parse_echo(resp.body)
          assert.matches("^" .. want .. " /echo ", req.line, 1, false)
          assert.equal(want == "POST" and "payload" or "", req.body)
        end
      end)

      it("stops after 10 redirects", function()
        local url = srv.url .. "/hello"
        for _ = 1, 10 do url = srv.url .. "/goto/302/" .. url end
        assert.equal("hello", assert(http.request({ url = url, follow_redirects = true })).body)
        local _, err = http.request({ url = srv.url .. "/goto/302/" .. url, follow_redirects = true })
        assert.equal("invalid", err.kind)
        assert.matches("too many redirects", err.message)
      end)

      it("refuses https -> http and other schemes", function()
        local check = http._redirect_check
        assert.same({ nil, "redirect from https to http refused" },
          { check("https://api.example/a", "http://api.example/b") })
        assert.same({ nil, "redirect to a scheme other than http or https refused" },
          { check("https://api.example/a", "ftp://api.example/b") })
        assert.equal("same_origin", check("https://api.example/a", "https://API.example:443/b"))
        assert.equal("other_origin", check("https://api.example/a", "https://evil.example/b"))
        assert.equal("other_origin", check("https://api.example/a", "https://api.example:8443/b"))
        assert.equal("other_origin", check("http://api.example/a", "https://api.example/b"))
        -- over the wire: the refusal happens before any request to the new URL
        local _, err = http.request({ url = srv.url .. "/goto/302/ftp://127.0.0.1/x", follow_redirects = true })
        assert.equal("invalid", err.kind)
      end)
    end)

    it("reads chunked bodies and bodies of exactly max_body bytes", function()
      local resp = assert(http.request({ url = srv.url .. "/chunked/300000" }))
      assert.equal(300000, #resp.body)
      resp = assert(http.request({ url = srv.url .. "/huge/1000", max_body = 1000 }))
      assert.equal(1000, #resp.body)
      resp = assert(http.request({ url = srv.url .. "/chunked/1000", max_body = 1000 }))
      assert.equal(1000, #resp.body)
    end)

    it("reports download progress to a callback", function()
      local calls = {}
      local resp = assert(http.request({ url = srv.url .. "/slow/20000",
        progress = function(now, total) calls[#calls + 1] = { now, total } end }))
      assert.equal(20000, #resp.body)
      assert.is_true(#calls >= 2)
      for i = 2, #calls do assert.is_true(calls[i][1] >= calls[i - 1][1]) end
      assert.same({ 20000, 20000 }, calls[#calls])
    end)

    it("re-raises an error from the progress callback and stays usable", function()
      local ok, err = pcall(http.request, { url = srv.url .. "/slow/20000",
        progress = function() error("stop here") end })
      assert.is_false(ok)
      assert.matches("stop here", err)
      assert.equal("hello", assert(http.request({ url = srv.url .. "/hello" })).body)
    end)

    it("refuses to be called from its own progress callback", function()
      local ok, err = pcall(http.request, { url = srv.url .. "/slow/20000",
        progress = function() http.request({ url = srv.url .. "/hello" }) end })
      assert.is_false(ok)
      assert.matches("progress callback", err)
    end)
  end)

  describe("errors", function()
    it("invalid: bad URLs and schemes other than http and https", function()
      for _, url in ipairs({ "not a url", "", "127.0.0.1/x", "ftp://127.0.0.1/",
        "file:///etc/passwd", "gopher://127.0.0.1/", "http://", "http://exa mple.com/",
        "http://127.0.0.1/\r\nX: y", "http://127.0.0.1\0.evil/" }) do
        local resp, err = http.request({ url = url })
        assert_err("invalid", resp, err)
        assert.is_nil(err.curl_code)
      end
      local _, err = http.request({ url = "ftp://127.0.0.1/" })
      assert.matches("only http and https", err.message)
    end)

    it("invalid: CR or LF in a header, a bad header name or method", function()
      assert_err("invalid", http.request({ url = srv.url .. "/hello",
        headers = { ["X-A"] = "a\r\nInjected: 1" } }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello",
        headers = { ["X-A"] = { "ok", "b\nc" } } }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello", headers = { ["X A"] = "1" } }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello", headers = { [""] = "1" } }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello",
        headers = { ["X:A"] = "1" } }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello", method = "GET /x" }))
      assert_err("invalid", http.request({ url = srv.url .. "/hello", method = "" }))
    end)

    it("dns: a name under the reserved .invalid TLD", function()
      local err = assert_err("dns", http.request({ url = "http://no-such-host.invalid/" }))
      assert.matches("no%-such%-host%.invalid", err.message)
      assert.equal(6, err.curl_code)
    end)

    it("connect: a closed local port", function()
      local err = assert_err("connect",
        http.request({ url = "http://127.0.0.1:" .. closed_port() .. "/" }))
      assert.equal(7, err.curl_code)
    end)

    it("connect: connect_timeout_ms passes before the connection is made", function()
      local stuck = start_server("--no-accept 30")
      local resp, err = http.request({ url = stuck.url .. "/", connect_timeout_ms = 200 })
      stop_server(stuck)
      assert_err("connect", resp, err)
      assert.equal(28, err.curl_code)
    end)

    it("tls: https to a plain-HTTP port fails the handshake", function()
      local err = assert_err("tls",
        http.request({ url = "https://127.0.0.1:" .. srv.port .. "/hello" }))
      assert.equal(35, err.curl_code)
    end)

    it("tls: verifies certificates (a self-signed one is rejected)", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. h.shq(dir)))
      local _, gen_err, code = h.sh(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 " ..
        "-nodes -keyout %s/k.pem -out %s/c.pem -days 1 -subj /CN=127.0.0.1"):format(h.shq(dir), h.shq(dir)))
      assert.equal(0, code, gen_err)
      local port = closed_port()
      -- one connection, then s_server exits; `timeout` bounds it in any case
      local tls = assert(io.popen(("exec timeout 20 openssl s_server -naccept 1 -key %s/k.pem " ..
        "-cert %s/c.pem -accept 127.0.0.1:%s -www 2>&1"):format(h.shq(dir), h.shq(dir), port), "r"))
      for line in tls:lines() do
        if line:match("^ACCEPT") then break end
      end
      local resp, err = http.request({ url = "https://127.0.0.1:" .. port .. "/" })
      tls:close()
      os.execute("rm -rf " .. h.shq(dir))
      assert_err("tls", resp, err)
      assert.equal(60, err.curl_code) -- CURLE_PEER_FAILED_VERIFICATION
    end)

    it("timeout: a server that never answers, within timeout_ms", function()
      local t0 = require("oflua.core").monotonic()
      local err = assert_err("timeout", http.request({ url = srv.url .. "/stall", timeout_ms = 300 }))
      assert.equal(28, err.curl_code)
      assert.is_true(require("oflua.core").monotonic() - t0 < 30) -- bounded, not a timing test
    end)

    it("timeout: a body that arrives too slowly", function()
      assert_err("timeout", http.request({ url = srv.url .. "/slow/1000", timeout_ms = 200 }))
    end)

    it("reset: the server closes mid-response", function()
      assert_err("reset", http.request({ url = srv.url .. "/truncate" }))
    end)

    it("reset: the server resets the connection mid-response", function()
      assert_err("reset", http.request({ url = srv.url .. "/reset" }))
    end)

    it("reset: the server answers with something that is not HTTP", function()
      assert_err("reset", http.request({ url = srv.url .. "/garbage" }))
    end)

    it("too_large: a Content-Length above max_body", function()
      local err = assert_err("too_large",
        http.request({ url = srv.url .. "/huge/50000000", max_body = 100000 }))
      assert.matches("100000", err.message)
    end)

    it("too_large: a chunked body that grows past max_body", function()
      assert_err("too_large", http.request({ url = srv.url .. "/chunked/1000001", max_body = 1000000 }))
    end)

    it("too_large: the default limit is 16 MiB", function()
      assert_err("too_large", http.request({ url = srv.url .. "/chunked/" .. (16 * 1024 * 1024 + 1) }))
    end)

    it("never puts request headers into error messages", function()
      local secret = "sk_live_do_not_leak_1234567890"
      local _, err = http.request({ url = srv.url .. "/stall", timeout_ms = 100,
        headers = { apikey = secret, ["x-connection-id"] = "conn_secret_42" } })
      assert.equal("timeout", err.kind)
      assert.is_nil(tostring(err):find(secret, 1, true))
      assert.is_nil(tostring(err):find("conn_secret_42", 1, true))
    end)

    it("is still usable after every kind of failure", function()
      local resp = assert(http.request({ url = srv.url .. "/hello" }))
      assert.equal("hello", resp.body)
    end)
  end)

  describe("argument checking", function()
    local function raises(pattern, req)
      local ok, err = pcall(http.request, req)
      assert.is_false(ok)
      assert.matches(pattern, err)
    end

    it("raises a clear error for wrong types", function()
      raises("bad argument #1 to '[%w.]*request' %(table expected, got nil%)", nil)
      raises("table expected, got string", "http://x/")
      raises("bad field 'url' in request to 'request' %(string expected, got nil%)", {})
      raises("bad field 'url' .*got number", { url = 5 })
      raises("bad field 'method'", { url = srv.url, method = 1 })
      raises("bad field 'body'", { url = srv.url, body = {} })
      raises("bad field 'headers'", { url = srv.url, headers = "a: b" })
      raises("bad field 'headers'", { url = srv.url, headers = { a = true } })
      raises("bad field 'headers'", { url = srv.url, headers = { "a: b" } })
      raises("bad field 'headers'", { url = srv.url, headers = { a = { {} } } })
      raises("bad field 'timeout_ms'", { url = srv.url, timeout_ms = "10" })
      raises("bad field 'timeout_ms'", { url = srv.url, timeout_ms = 0 })
      raises("bad field 'timeout_ms'", { url = srv.url, timeout_ms = 1.5 })
      raises("bad field 'connect_timeout_ms'", { url = srv.url, connect_timeout_ms = -1 })
      raises("bad field 'max_body'", { url = srv.url, max_body = 0 })
      raises("bad field 'follow_redirects'", { url = srv.url, follow_redirects = "yes" })
      raises("bad field 'progress'", { url = srv.url, progress = true })
    end)

    it("raises on unknown fields so typos do not pass silently", function()
      raises("unknown field 'timeout' in request to 'request'", { url = srv.url, timeout = 5 })
      raises("non%-string key", { url = srv.url, "extra" })
    end)
  end)

  describe("request_many", function()
    it("returns results in request order, each {resp} or {nil, err}", function()
      local results = http.request_many({
        { url = srv.url .. "/delay/150" },
        { url = srv.url .. "/hello" },
        { url = "ftp://127.0.0.1/" },
        { url = srv.url .. "/stall", timeout_ms = 200 },
        { url = srv.url .. "/status/500" },
        { url = srv.url .. "/echo", method = "POST", body = "many" },
      })
      assert.equal(6, #results)
      assert.equal("delayed", results[1][1].body)
      assert.equal(results[1][1], results[1].response)
      assert.equal("hello", results[2].response.body)
      assert.is_nil(results[3][1])
      assert.equal("invalid", results[3][2].kind)
      assert.equal(results[3][2], results[3].error)
      assert.equal("timeout", results[4].error.kind)
      assert.equal(500, results[5].response.status)
      assert.equal("many", parse_echo(results[6].response.body).body)
      local resp, err = table.unpack(results[2], 1, 2)
      assert.equal(200, resp.status)
      assert.is_nil(err)
    end)

    it("runs requests in parallel, on separate connections", function()
      local reqs = {}
      for i = 1, 6 do reqs[i] = { url = srv.url .. "/delay/300" } end
      local conns = {}
      for _, r in ipairs(http.request_many(reqs)) do
        conns[assert(r.response).headers["x-conn"]] = true
      end
      local n = 0
      for _ in pairs(conns) do n = n + 1 end
      assert.equal(6, n) -- sequential requests would all share one kept-alive connection
    end)

    it("honours max_parallel", function()
      local reqs = {}
      for i = 1, 4 do reqs[i] = { url = srv.url .. "/delay/20" } end
      local conns = {}
      for _, r in ipairs(http.request_many(reqs, { max_parallel = 1 })) do
        conns[assert(r.response).headers["x-conn"]] = true
      end
      local n = 0
      for _ in pairs(conns) do n = n + 1 end
      assert.equal(1, n)
    end)

    it("accepts an empty list", function()
      assert.same({}, http.request_many({}))
    end)

    it("raises for wrong types, naming the request", function()
      local ok, err = pcall(http.request_many, { { url = srv.url }, "x" })
      assert.is_false(ok)
      assert.matches("bad request #2 to 'request_many' %(table expected, got string%)", err)
      ok, err = pcall(http.request_many, { { url = srv.url }, { url = srv.url, body = 1 } })
      assert.is_false(ok)
      assert.matches("bad field 'body' in request #2 to 'request_many'", err)
      ok, err = pcall(http.request_many, "x")
      assert.is_false(ok)
      assert.matches("table expected", err)
      ok, err = pcall(http.request_many, {}, { max_parallel = 0 })
      assert.is_false(ok)
      assert.matches("max_parallel", err)
    end)

    it("re-raises a progress callback error and cancels the rest", function()
      local ok, err = pcall(http.request_many, {
        { url = srv.url .. "/delay/2000" },
        { url = srv.url .. "/slow/20000", progress = function() error("enough") end },
      })
      assert.is_false(ok)
      assert.matches("enough", err)
      assert.equal("hello", assert(http.request({ url = srv.url .. "/hello" })).body)
    end)
  end)

  describe("lifetime", function()
    it("frees its handles when a state closes, also with requests made from many states", function()
      local script = h.write_file(os.tmpname() .. ".lua", ([[
        local http = require("oflua.http")
        for i = 1, 3 do
          local r = assert(http.request({ url = %q }))
          assert(r.body == "hello")
        end
        local rs = http.request_many({ { url = %q }, { url = "http://x.invalid/" } })
        assert(rs[1].response and rs[2].error.kind == "dns")
        print("ok")
      ]]):format(srv.url .. "/hello", srv.url .. "/hello"))
      local out, err, code = h.oflua({ script })
      os.remove(script)
      assert.equal(0, code, err)
      assert.equal("ok\n", out)
    end)
  end)
end)
