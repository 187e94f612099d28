local fakes = require("spec.support.fakes")
local cjson = require("cjson")
local connections = require("ofauth.connections")

local function repo()
  local st = fakes.store()
  local t = 100
  return connections.new({ store = st, now = function() return t end }), st
end

describe("ofauth.connections", function()
  it("saves, merges and finds a record by user and by connection id", function()
    local r = repo()
    assert(r:save("u1", { connection_id = "conn_a1", status = "active", permissions = { "profile" } }))
    assert(r:save("u1", { user_data = { username = "x" } }))
    local rec = r:get("u1")
    assert.equal("conn_a1", rec.connection_id)
    assert.equal("active", rec.status)
    assert.same({ "profile" }, rec.permissions)
    assert.equal("x", rec.user_data.username)
    assert.equal("u1", r:by_connection_id("conn_a1").user_id)
    assert.is_nil(r:by_connection_id("conn_none"))
  end)

  it("moves the reverse index when a user's connection changes", function()
    local r = repo()
    r:save("u1", { connection_id = "conn_old" })
    r:save("u1", { connection_id = "conn_new" })
    assert.is_nil(r:by_connection_id("conn_old"))
    assert.equal("u1", r:by_connection_id("conn_new").user_id)
  end)

  it("refuses unknown statuses and empty user ids", function()
    local r = repo()
    assert.is_nil((r:save("u1", { status = "weird" })))
    assert.is_nil((r:save("", { status = "active" })))
  end)

  it("marks expired once and says whether it changed", function()
    local r = repo()
    r:save("u1", { connection_id = "conn_e1", status = "active" })
    local rec, changed = r:mark_expired("conn_e1", "session_expired")
    assert.equal("expired", rec.status)
    assert.is_true(changed)
    assert.equal(100, rec.expired_at)
    local _, again = r:mark_expired("conn_e1")
    assert.is_false(again)
    assert.is_nil(r:mark_expired("conn_unknown"))
  end)

  it("lists every record", function()
    local r = repo()
    r:save("a", { status = "active" })
    r:save("b", { status = "expired" })
    local seen = {}
    for rec in r:each() do seen[#seen + 1] = rec.user_id end
    table.sort(seen)
    assert.same({ "a", "b" }, seen)
  end)

  describe("disconnect", function()
    local function client_answering(status)
      local http = fakes.http({ { status = status, body = status == 204 and "" or cjson.encode({ code = "X" }) } })
      return assert(require("ofauth.client").new({ api_key = "sk_test_conn_spec_1", base_url = "http://127.0.0.1:1",
        http = http, policy = { max_attempts = 1 } })), http
    end

    it("calls the API, then wipes the local record and index", function()
      local r = repo()
      r:save("u1", { connection_id = "conn_d1", status = "active" })
      local c, http = client_answering(204)
      assert.is_true(r:disconnect(c, "u1"))
      assert.equal("DELETE", http.requests[1].method)
      assert.matches("/v2/account/connections/conn_d1$", http.requests[1].url)
      assert.is_nil(r:get("u1"))
      assert.is_nil(r:by_connection_id("conn_d1"))
    end)

    it("wipes the record when OFAuth no longer knows the connection (404)", function()
      local r = repo()
      r:save("u1", { connection_id = "conn_d2" })
      assert.is_true(r:disconnect((client_answering(404)), "u1"))
      assert.is_nil(r:get("u1"))
    end)

    it("keeps the record when the API call fails otherwise", function()
      local r = repo()
      r:save("u1", { connection_id = "conn_d3" })
      local ok, err = r:disconnect((client_answering(401)), "u1")
      assert.is_nil(ok)
      assert.equal(401, err.status)
      assert.equal("conn_d3", r:get("u1").connection_id)
    end)

    it("says when nothing is stored for the user", function()
      local r = repo()
      local ok, err = r:disconnect((client_answering(204)), "nobody")
      assert.is_nil(ok)
      assert.equal("invalid", err.kind)
      assert.matches("no connection stored", err.message)
    end)
  end)

  describe("default webhook handlers", function()
    local function event(typ, data) return { type = typ, data = data } end

    it("save on created, update status on updated, notify once on expired", function()
      local calls = {}
      local st = fakes.store()
      local r = connections.new({ store = st, now = function() return 7 end,
        on_reauth_required = function(rec, ctx) calls[#calls + 1] = { rec.user_id, ctx.event } end })
      local h = r:handlers()
      h["connection.created"](event("connection.created", { clientReferenceId = "u9",
        connection = { id = "conn_h1", permissions = { "profile" }, userData = { username = "cr" } } }))
      assert.equal("active", r:get("u9").status)
      assert.equal("cr", r:get("u9").user_data.username)
      h["connection.updated"](event("connection.updated", { clientReferenceId = cjson.null,
        connection = { id = "conn_h1", status = "awaiting_2fa" } }))
      assert.equal("awaiting_2fa", r:get("u9").status)
      h["connection.expired"](event("connection.expired", { connection = { id = "conn_h1" } }))
      h["connection.expired"](event("connection.expired", { connection = { id = "conn_h1" } }))
      assert.equal("expired", r:get("u9").status)
      assert.same({ { "u9", "connection.expired" } }, calls)
    end)

    it("an updated event that reports expired also notifies once", function()
      local n = 0
      local r = connections.new({ store = fakes.store(), on_reauth_required = function() n = n + 1 end })
      local h = r:handlers()
      h["connection.created"](event("connection.created", { clientReferenceId = "u", connection = { id = "conn_z" } }))
      h["connection.updated"](event("connection.updated", { connection = { id = "conn_z", status = "expired" } }))
      h["connection.expired"](event("connection.expired", { connection = { id = "conn_z" } }))
      assert.equal(1, n)
    end)

    it("ignores late updated/expired events about a connection the user no longer has", function()
      local n = 0
      local r = connections.new({ store = fakes.store(), on_reauth_required = function() n = n + 1 end })
      local h = r:handlers()
      local function ev(typ, id) return event(typ, { clientReferenceId = "u", connection = { id = id } }) end
      h["connection.created"](ev("connection.created", "conn_OLD"))
      h["connection.created"](ev("connection.created", "conn_NEW"))
      h["connection.expired"](ev("connection.expired", "conn_OLD"))
      h["connection.updated"](event("connection.updated", { clientReferenceId = "u",
        connection = { id = "conn_OLD", status = "awaiting_2fa" } }))
      local rec = r:get("u")
      assert.equal("conn_NEW", rec.connection_id)
      assert.equal("active", rec.status)
      assert.equal(0, n)
    end)

    it("raises on an event without a connection id (the inbox retries it)", function()
      local r = repo()
      assert.has_error(function() r:handlers()["connection.created"](event("connection.created", {})) end)
    end)

    it("ignores a connection it cannot match to a user", function()
      local r, st = repo()
      r:handlers()["connection.updated"](event("connection.updated", { connection = { id = "conn_unknown" } }))
      assert.is_nil(st:get("conn:conn_unknown"))
    end)

    it("a failing re-auth hook makes the event fail, and the retry notifies", function()
      local down, told = true, 0
      local r = connections.new({ store = fakes.store(), on_reauth_required = function()
        if down then error("smtp down") end
        told = told + 1
      end })
      local h = r:handlers()
      h["connection.created"](event("connection.created", { clientReferenceId = "u", connection = { id = "conn_q" } }))
      local expired = event("connection.expired", { connection = { id = "conn_q" } })
      assert.has_error(function() h["connection.expired"](expired) end)
      down = false
      h["connection.expired"](expired) -- the inbox retries the event
      h["connection.expired"](expired)
      assert.equal(1, told)
    end)

    it("notifies again after the connection was active and expired anew", function()
      local told = 0
      local r = connections.new({ store = fakes.store(), on_reauth_required = function() told = told + 1 end })
      local h = r:handlers()
      local c = event("connection.created", { clientReferenceId = "u", connection = { id = "conn_r" } })
      local e = event("connection.expired", { connection = { id = "conn_r" } })
      h["connection.created"](c)
      h["connection.expired"](e)
      h["connection.updated"](event("connection.updated", { connection = { id = "conn_r", status = "active" } }))
      h["connection.expired"](e)
      assert.equal(2, told)
    end)
  end)
end)
