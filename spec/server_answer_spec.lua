-- Prepared answers (server.answer) and s:inbox_add_grouped's `answer`: a
-- handler parked on a grouped insert is answered by the server as soon as the
-- row is committed as new, before the handler resumes; what the handler then
-- returns is dropped (it still runs to its end). A duplicate, or an insert that completes before the
-- handler parked, is answered by the handler itself. A real server in this
-- process (server.listen), a real store, oflua.http with keep-alive.
local h = require("spec.helper")
local http = require("oflua.http")
local server = require("oflua.server")
local store = require("oflua.store")

describe("server.answer", function()
  it("checks what it is given as a handler's answer is checked", function()
    local a = server.answer(202, "queued", { ["content-type"] = "text/plain", ["x-a"] = { "1", "2" } })
    assert.equal("oflua.server.answer (202)", tostring(a))
    assert.equal("oflua.server.answer (204)", tostring(server.answer(204)))
    assert.has_error(function() server.answer("200") end)
    assert.has_error(function() server.answer(99) end, "handler returned status 99, not within 200..599")
    assert.has_error(function() server.answer(200, {}) end)
    assert.has_error(function() server.answer(200, "x", "content-type") end)
    assert.has_error(function() server.answer(200, "x", { ["bad name"] = "v" }) end,
      "handler returned an invalid header name")
    assert.has_error(function() server.answer(200, "x", { ["x-a"] = "a\r\nb" }) end)
    assert.has_error(function() server.answer(server.DROP) end)
  end)
end)

describe("s:inbox_add_grouped with an answer, in a server handler", function()
  local dir, srv, st
  setup(function()
    dir = h.tmpdir()
    local key = store.keygen()
    local script = h.write_file(dir .. "/app.lua", ([[
      local server = require("oflua.server")
      local st = assert(require("oflua.store").open({ path = %q, key = %q }))
      local early = server.answer(200, '{"status":"accepted"}', { ["content-type"] = "application/json" })
      return function(req)
        local ok, err = st:inbox_add_grouped(req.headers["x-id"], req.body, nil, nil, early)
        server.shared("answer_spec"):incr("resumed") -- the rest runs, answered early or not
        if ok == nil then return 503, tostring(err) end
        return 201, "handler:" .. tostring(ok), { ["x-handler"] = "yes" }
      end
    ]]):format(dir .. "/s.db", key))
    srv = assert(server.listen({ script = script, workers = 2 }))
    st = assert(store.open({ path = dir .. "/s.db", key = key }))
  end)
  teardown(function()
    if st then st:close() end
    if srv then srv:stop() end
    os.execute("rm -rf " .. h.shq(dir))
  end)

  it("answers a new row early, and a duplicate from the handler", function()
    local early, late = 0, 0
    local N = 60
    for i = 1, N do
      local r = assert(http.request({ method = "POST", url = srv:url() .. "/", body = "payload " .. i,
        headers = { ["x-id"] = "evt" .. i } }))
      if r.status == 200 then
        early = early + 1
        assert.equal('{"status":"accepted"}', r.body)
        assert.equal("application/json", r.headers["content-type"])
        assert.is_nil(r.headers["x-handler"])
      else -- committed before the handler parked: it answered itself
        late = late + 1
        assert.equal(201, r.status)
        assert.equal("handler:true", r.body)
      end
      assert.equal("payload " .. i, st:inbox_get("evt" .. i).payload) -- durable before any answer
    end
    assert.equal(N, early + late)
    assert.is_true(early > 0, "no request was answered early")
    -- the server counts exactly the answers it sent early
    assert.equal(early, srv:stats().answered_early)
    -- a duplicate is the handler's to answer
    local r = assert(http.request({ method = "POST", url = srv:url() .. "/", body = "again",
      headers = { ["x-id"] = "evt1" } }))
    assert.equal(201, r.status)
    assert.equal("handler:false", r.body)
    assert.equal("payload 1", st:inbox_get("evt1").payload)
    assert.equal(early, srv:stats().answered_early)
    -- every handler ran to its end, also those answered before they resumed
    assert.equal(N + 1, h.eventually(function()
      local n = server.shared("answer_spec"):get("resumed")
      return n == N + 1 and n
    end, 10) or server.shared("answer_spec"):get("resumed"))
  end)

  it("keeps the connection usable after an early answer (keep-alive)", function()
    local reqs = {}
    for i = 1, 40 do
      reqs[i] = { method = "POST", url = srv:url() .. "/", body = "k" .. i, headers = { ["x-id"] = "ka" .. i } }
    end
    local before = srv:stats().answered_early
    local new = 0
    for _, res in ipairs(http.request_many(reqs)) do
      assert.is_nil(res.error)
      assert.is_true(res.response.status == 200 or res.response.status == 201)
      if res.response.status == 200 then new = new + 1 end
    end
    assert.is_true(new > 0, "no request on a kept-alive connection was answered early")
    assert.equal(new, srv:stats().answered_early - before)
    assert.equal(40 + 60, st:inbox_stats().total)
  end)
end)

describe("a handler answered early", function()
  local dir
  setup(function() dir = h.tmpdir() end)
  teardown(function() os.execute("rm -rf " .. h.shq(dir)) end)

  -- a server whose handler, answered early, goes on for `rest` seconds
  local function start(name, rest, opts)
    local key = store.keygen()
    local script = h.write_file(dir .. "/" .. name .. ".lua", ([[
      local server = require("oflua.server")
      local st = assert(require("oflua.store").open({ path = %q, key = %q }))
      local early = server.answer(200, "early")
      return function(req)
        st:inbox_add_grouped(req.headers["x-id"], "p", nil, nil, early)
        server.sleep(%s)
        server.shared(%q):incr("ended")
        return 201, "late"
      end
    ]]):format(dir .. "/" .. name .. ".db", key, rest, name))
    local o = { script = script, workers = 2 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(server.listen(o))
  end

  local function send(srv, n, prefix)
    local reqs = {}
    for i = 1, n do
      reqs[i] = { method = "POST", url = srv:url() .. "/", body = "x", headers = { ["x-id"] = prefix .. i } }
    end
    local early = 0
    for _, res in ipairs(http.request_many(reqs)) do
      assert.is_nil(res.error)
      if res.response.status == 200 then early = early + 1 end
    end
    return early
  end

  it("runs to its end before stop() returns (within the grace)", function()
    local srv = start("stop", 0.3)
    local early = send(srv, 8, "s")
    assert.is_true(early > 0)
    srv:stop(5)
    -- every handler ended, none was cut as timed out
    assert.equal(8, server.shared("stop"):get("ended"))
    assert.equal(0, srv:stats().handler_timeouts)
  end)

  it("past handler_timeout is cut, but not counted as a request timed out", function()
    local srv = start("cut", 0.8, { handler_timeout = 0.3 })
    local early = send(srv, 4, "c")
    assert.is_true(early > 0)
    local st = srv:stats()
    -- only the handlers that answered themselves (after 0.8 s > 0.3 s) timed out
    assert.equal(4 - early, st.handler_timeouts)
    assert.equal(early, st.answered_early)
    srv:stop(1)
    assert.is_nil(server.shared("cut"):get("ended"))
  end)
end)
