-- The ofauth library end to end against the local emulator, on 127.0.0.1:
-- Link -> connection.created webhook -> stored encrypted -> Access API with
-- the stored id -> SESSION_EXPIRED -> re-auth hook called once.
local h = require("spec.helper")
local cjson = require("cjson")
local http = require("oflua.http")
local server = require("oflua.server")
local store = require("oflua.store")
local ofauth = require("ofauth")

describe("ofauth end to end against the emulator", function()
  local API_KEY = "sk_test_e2e_" .. require("oflua.crypto").hex(require("oflua.crypto").random(8))
  local SECRET = ofauth.webhooks.new_secret()
  local emu, receiver, dict, tmpdir, db, key, st, client, conns
  local reauth_calls = {}
  local stderr_lines = {}

  setup(function()
    tmpdir = h.tmpdir()
    db, key = tmpdir .. "/e2e.db", store.keygen()
    local dict_name = "e2e_" .. os.time() .. math.random(1e6)
    dict = server.shared(dict_name)
    receiver = assert(server.listen({ script = h.source_dir .. "/spec/fixtures/servers/integration.lua",
      workers = 2, args = { store = db, key = key, secret = SECRET, dict = dict_name } }))
    emu = assert(require("ofauth.emulator").start({ api_keys = { API_KEY }, webhook_secret = SECRET,
      webhook_url = receiver:url() .. "/", subscribers = 345, webhook_base_delay = 0.05 }))
    st = assert(store.open({ path = db, key = key }))
    conns = ofauth.connections.new({ store = st })
    ofauth.log.sink = function(line) stderr_lines[#stderr_lines + 1] = line end
    client = assert(ofauth.client({ api_key = API_KEY, base_url = emu:url(), connections = conns,
      policy = { base_delay = 0.01, on_reauth_required = function(rec, ctx)
        reauth_calls[#reauth_calls + 1] = { user = rec.user_id, path = ctx.path }
      end } }))
  end)

  teardown(function()
    ofauth.log.sink = function(line) io.stderr:write(line, "\n") end
    if st then st:close() end
    if receiver then receiver:close() end
    if emu then emu:stop() end
    os.execute("rm -rf " .. h.shq(tmpdir))
  end)

  local conn_id

  it("links a user: Link session, hosted page, checked callback", function()
    local s = assert(ofauth.link.start(client, "user-e2e", { store = st, redirect_url = "http://127.0.0.1:1/cb" }))
    local session = s.url:match("/link/([^/?#]+)")
    local resp = assert(http.request({ method = "POST", url = emu:url() .. "/emulator/link/" .. session .. "/complete",
      body = '{"outcome":"success"}', headers = { ["content-type"] = "application/json" } }))
    assert.equal(200, resp.status)
    local done = cjson.decode(resp.body)
    conn_id = done.connectionId
    local cb = assert(ofauth.link.callback(done.redirectUrl:match("%?(.*)$"), { store = st, state = s.state }))
    assert.equal("success", cb.status)
    assert.equal("user-e2e", cb.user_id)
    assert.equal(conn_id, cb.connection_id)
    -- the redirect alone activates nothing
    assert.is_nil(conns:get("user-e2e"))
  end)

  it("stores the connection when connection.created arrives, encrypted", function()
    assert.is_true(emu:deliver_pending(10))
    local rec = conns:get("user-e2e")
    assert.equal("active", rec.status)
    assert.equal(conn_id, rec.connection_id)
    local raw = h.slurp(db) .. h.slurp(db .. "-wal")
    assert.is_nil(raw:find(conn_id, 1, true))
    assert.is_nil(raw:find("user-e2e", 1, true))
  end)

  it("calls the Access API with the stored id, across every subscriber page", function()
    local acc = client:access(conns:get("user-e2e").connection_id)
    local me = assert(acc:self())
    assert.is_string(me.username)
    local n, pages = 0, 0
    for _ in acc:subscribers({ limit = 50, on_page = function() pages = pages + 1 end }) do n = n + 1 end
    assert.equal(345, n)
    assert.equal(7, pages)
  end)

  it("on SESSION_EXPIRED marks the connection expired and calls the re-auth hook once", function()
    local resp = assert(http.request({ method = "POST", url = emu:url() .. "/emulator/connections/" .. conn_id
      .. "/expire" }))
    assert.equal(200, resp.status)
    local _, err = client:access(conn_id):self()
    assert.equal("reauth_required", err.kind)
    assert.equal("SESSION_EXPIRED", err.code)
    assert.equal(1, #reauth_calls)
    assert.equal("user-e2e", reauth_calls[1].user)
    assert.equal("expired", conns:get("user-e2e").status)
    -- the connection.expired webhook that follows does not notify a second time
    assert.is_true(emu:deliver_pending(10))
    assert.is_nil(dict:get("reauth"))
    local _, err2 = client:access(conn_id):self()
    assert.equal("reauth_required", err2.kind)
    assert.equal(1, #reauth_calls)
  end)

  it("reconnects with the stored connection id", function()
    local s = assert(ofauth.link.reconnect(client, "user-e2e", { connections = conns,
      redirect_url = "http://127.0.0.1:1/cb" }))
    local session = s.url:match("/link/([^/?#]+)")
    local resp = assert(http.request({ method = "POST", url = emu:url() .. "/emulator/link/" .. session .. "/complete",
      body = '{"outcome":"success"}', headers = { ["content-type"] = "application/json" } }))
    assert.equal(conn_id, cjson.decode(resp.body).connectionId)
    assert.is_true(emu:deliver_pending(10))
    assert.equal("active", conns:get("user-e2e").status)
    assert(client:access(conn_id):self())
  end)

  it("never wrote the API key, the webhook secret or a connection id to a log line", function()
    assert.is_true(#stderr_lines > 0)
    local all = table.concat(stderr_lines, "\n")
    assert.is_nil(all:find(API_KEY, 1, true))
    assert.is_nil(all:find(SECRET, 1, true))
    assert.is_nil(all:find(conn_id, 1, true))
  end)
end)
