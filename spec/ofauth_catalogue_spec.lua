-- The endpoint catalogue (ofauth.catalogue) end to end: every entry is called
-- through client:call / acc:call against the emulator and must answer with
-- its documented top-level fields; every pagination style is walked with
-- each(); parameters are checked before any request.
local cjson = require("cjson")
local http = require("oflua.http")
local catalogue = require("ofauth.catalogue")
local emulator = require("ofauth.emulator")
local ofauth_client = require("ofauth.client")
local generic = require("ofauth.emulator.generic")

local KEY = "sk_test_catalogue_spec"
local REDIRECT = "http://127.0.0.1:3000/cb"

-- a value of the right type for a required field
local function sample(e, field)
  local ty = catalogue.type_of(e, field)
  if field == "clientSecret" then return nil end -- filled from a real session
  if ty == "integer" or ty == "number" then return 5 end
  if ty == "id" then return "123" end
  if ty == "array" or ty == "array_or_string" then return { 1, 2 } end
  if ty == "object" then return { country = "US" } end
  if ty == "boolean" then return true end
  if field == "cookie" then return "auth_id=1; sess=abc; fp=x" end
  return "value"
end

describe("ofauth.catalogue", function()
  it("holds the 126 typed endpoints with unique TypeScript names", function()
    assert.equal(126, #catalogue.entries)
    local access = 0
    for _, e in ipairs(catalogue.entries) do
      if e.path:find("^/v2/access/") then access = access + 1 end
      assert.matches("^/v2/", e.path)
      assert.truthy(({ GET = 1, POST = 1, PUT = 1, PATCH = 1, DELETE = 1 })[e.method], e.name)
      if e.page then assert.truthy(require("ofauth.pagination").style(e.page), e.name) end
    end
    assert.equal(102, access)
    assert.equal("/v2/access/earnings/transactions", catalogue.find("access.earnings.listTransactions").path)
    assert.equal("marker", catalogue.find("earnings.listTransactions").page)
  end)

  it("lists entries by filter", function()
    local names = {}
    for _, e in ipairs(catalogue.list("tracking")) do names[#names + 1] = e.name end
    assert.equal(8, #names)
  end)
end)

describe("catalogue calls against the emulator", function()
  local emu, client, acc, conn_id

  local function ctl(method, path, body)
    local r = assert(http.request({ method = method, url = emu:url() .. path, timeout_ms = 10000,
      body = body and cjson.encode(body), headers = { ["content-type"] = "application/json" } }))
    return r.status, cjson.decode(r.body)
  end

  setup(function()
    emu = assert(emulator.start({ api_keys = { KEY }, subscribers = 50 }))
    client = assert(ofauth_client.new({ api_key = KEY, base_url = emu:url(), timeout_ms = 5000,
      policy = { max_attempts = 1 } }))
    local s = assert(client:link_init({ redirect_url = REDIRECT, client_reference_id = "user-1" }))
    local status, b = ctl("POST", "/emulator/link/" .. s.url:match("/link/([^/?#]+)") .. "/complete",
      { outcome = "success" })
    assert.equal(200, status)
    conn_id = b.connectionId
    acc = client:access(conn_id)
  end)

  teardown(function() if emu then emu:stop() end end)

  it("answers EVERY entry with its documented top-level fields", function()
    local secret = assert(client:link_init({ redirect_url = REDIRECT, client_reference_id = "u2" })).client_secret
    local checked, imported = 0, nil
    for _, e in ipairs(catalogue.entries) do
      local params = {}
      for f in pairs(e.required_set) do params[f] = sample(e, f) end
      if e.fields.clientSecret then params.clientSecret = secret end
      if e.fields.connectionId then params.connectionId = conn_id end
      if e.name == "account.connections.updateImport" then params.connectionId = imported end
      if e.name == "link.init" then params.redirectUrl, params.clientReferenceId = REDIRECT, "u3" end
      if e.name == "access.uploads.replace" or e.name == "access.uploads.replaceParts"
        or e.name == "access.uploads.complete" or e.name == "link.delete"
        or e.name == "account.connections.delete" or e.name == "account.connections.invalidate" then
        goto continue -- stateful: covered by the upload, Link and connection specs
      end
      do
        local res, err
        if e.connection then res, err = acc:call(e.name, params) else res, err = client:call(e.name, params) end
        assert.is_not_nil(res, e.name .. ": " .. tostring(err))
        assert.equal("table", type(res), e.name)
        if e.name == "account.connections.createImport" then imported = res.id end
        for _, f in ipairs(e.returns or {}) do
          assert.is_not_nil(res[f], ("%s: field %s missing"):format(e.name, f))
        end
        if e.item and e.page then
          local items = require("ofauth.pagination").items(res, e.items)
          assert.is_true(#items > 0, e.name)
          for _, f in ipairs(e.item) do
            assert.is_not_nil(items[1][f], ("%s: item field %s missing"):format(e.name, f))
          end
        end
        checked = checked + 1
      end
      ::continue::
    end
    assert.is_true(checked >= 120, "checked " .. checked)
    -- the stateful ones, in an order that works: the upload flow (single and
    -- parts) is in spec/ofauth_upload_spec.lua; here Link delete and a
    -- connection's invalidate and delete
    local fields = function(e, res)
      for _, f in ipairs(e.returns or {}) do assert.is_not_nil(res[f], e.name .. ": " .. f) end
    end
    local gone = assert(client:link_init({ redirect_url = REDIRECT, client_reference_id = "gone" }))
    assert.is_table(assert(client:call("link.delete", { clientSecret = gone.client_secret })))
    local s = assert(client:link_init({ redirect_url = REDIRECT, client_reference_id = "tmp" }))
    local _, b = ctl("POST", "/emulator/link/" .. s.url:match("/link/([^/?#]+)") .. "/complete", {})
    fields(catalogue.find("account.connections.invalidate"),
      assert(client:call("account.connections.invalidate", { connectionId = b.connectionId })))
    fields(catalogue.find("account.connections.delete"),
      assert(client:call("account.connections.delete", { connectionId = b.connectionId })))
    local up = assert(acc:call("access.uploads.init", { filename = "a.png", size = 3, contentType = "image/png" }))
    fields(catalogue.find("access.uploads.replace"),
      assert(acc:request("PUT", "/uploads/" .. up.mediaUploadId, { body = "abc" })))
  end)

  it("calls through the generated snake_case accessors", function()
    local tx = assert(acc.earnings:list_transactions({ startDate = "2026-01-01" }))
    assert.is_table(tx.list)
    local tl = assert(acc.promotions.tracking_links:list({ limit = 2 }))
    assert.equal(2, #tl.list)
    assert.is_table(assert(client.account:whoami()).permissions)
    assert.is_table(assert(acc.self:get()))
    assert.is_table(assert(acc:self())) -- the older helper still works
    assert.is_table(assert(acc:list_posts({ limit = 3 })).list)
  end)

  describe("each() over every pagination style", function()
    local function ids(it)
      local out = {}
      for item in it do out[#out + 1] = item end
      return out
    end
    local function check_all(name, params)
      local pages = 0
      local items = ids(acc:each(name, params, { on_page = function() pages = pages + 1 end }))
      assert.equal(generic.ITEMS, #items, name)
      local seen = {}
      for _, it in ipairs(items) do
        assert.is_nil(seen[it.id], name .. " repeated an item")
        seen[it.id] = true
        assert.equal("integer", math.type(it.id))
        assert.is_true(it.id > (1 << 53), "ids above 2^53 come back exact")
      end
      return pages
    end
    it("offset with list", function() assert.equal(3, check_all("access.vault.listMedia", { limit = 10 })) end)
    it("offset with items", function() assert.equal(5, check_all("access.analytics.posts.getTop", { limit = 5 })) end)
    it("nextOffset", function() assert.equal(3, check_all("access.chats.list", { limit = 10 })) end)
    it("marker <- nextMarker", function() assert.equal(3, check_all("access.earnings.listTransactions", {})) end)
    it("time cursor beforePublishTime <- tailMarker", function()
      assert.equal(3, check_all("access.listPosts", { limit = 10 }))
    end)
    it("id cursor last_id", function()
      assert.equal(3, check_all("access.chats.listMessages", { userId = "42", limit = 10 }))
    end)
    it("opaque cursor <- nextCursor", function() assert.equal(3, check_all("vaultPlus.getList", { limit = 10 })) end)
    it("bare arrays", function() assert.equal(4, check_all("access.users.search", { limit = 8 })) end)
    it("stops at max_items and raises a failure from the loop", function()
      assert.equal(4, #ids(acc:each("access.vault.listMedia", { limit = 3 }, { max_items = 4 })))
      local ok, err = pcall(function()
        for _ in acc:each("access.vault.listMedia", { limit = "many" }) do end
      end)
      assert.is_false(ok)
      assert.equal("invalid", err.kind)
    end)
    it("refuses a non-paginated operation (programming error)", function()
      assert.has_error(function() acc:each("access.self.get") end)
    end)
  end)

  describe("fault injection on catalogue endpoints", function()
    it("a 429 with Retry-After in the middle of a marker walk is waited out", function()
      local slept = {}
      local c = assert(ofauth_client.new({ api_key = KEY, base_url = emu:url(), timeout_ms = 5000,
        policy = { base_delay = 0.01, max_attempts = 3, sleep = function(d) slept[#slept + 1] = d end } }))
      local pages = 0
      local status = ctl("POST", "/emulator/faults", { kind = "rate_limit", retry_after = 0, count = 1,
        path_prefix = "/v2/access/earnings/transactions" })
      assert.equal(201, status)
      local n = 0
      for _ in c:access(conn_id):each("access.earnings.listTransactions", {},
        { on_page = function() pages = pages + 1 end }) do n = n + 1 end
      assert.equal(generic.ITEMS, n)
      assert.equal(1, #slept)
      status = ctl("POST", "/emulator/faults", { kind = "server_error", status = 500, count = 5,
        path_prefix = "/v2/access/promotions" })
      assert.equal(201, status)
      local _, err = c:access(conn_id):call("access.promotions.create", { discount = 10, message = "m",
        finishDays = 1, subscribeCounts = 1, subscribeDays = 1, type = { "new" } })
      assert.equal("api", err.kind) -- a POST is not retried on a 500
      assert.equal(500, err.status)
      ctl("DELETE", "/emulator/faults")
    end)
  end)

  describe("parameter checks before any request", function()
    it("missing required, unknown and mistyped fields are kind invalid", function()
      local _, err = acc:call("access.promotions.trackingLinks.create", {})
      assert.equal("invalid", err.kind)
      assert.matches("missing required field name", err.message)
      _, err = acc:call("access.earnings.listTransactions", { startdate = "2026-01-01" })
      assert.equal("invalid", err.kind)
      assert.matches("unknown field startdate", err.message)
      _, err = acc:call("access.vault.listMedia", { limit = "10" })
      assert.matches("limit must be an integer", err.message)
      _, err = acc:call("access.vault.lists.createMedia", { listId = 1, mediaIds = 5 })
      assert.matches("mediaIds must be an array", err.message)
      _, err = client:call("access.self.get")
      assert.matches("needs a connection", err.message)
      assert.has_error(function() client:call("no.such.op") end)
    end)
  end)

  describe("encodings", function()
    it("sends arrays as repeated keys and filter as deep-object keys", function()
      assert.equal("?ids=1&ids=2&x=true", ofauth_client.encode_query({ ids = { 1, 2 }, x = true }))
      assert.equal("?filter%5Bonline%5D=1&filter%5Bpaid%5D=true&type=all",
        ofauth_client.encode_query({ filter = { online = 1, paid = true }, type = "all" }))
      assert.equal("?id=9007199254740993", ofauth_client.encode_query({ id = (1 << 53) + 1 }))
      local res = assert(acc:request("GET", "/unknown/echo", { query = { ids = { 1, 2 } } }))
      assert.equal("ids=1&ids=2", res.raw_query)
    end)
    it("sends a DELETE body as JSON", function()
      local res = assert(acc:request("DELETE", "/unknown/echo", { body = { withUserId = 7 } }))
      assert.equal(7, res.body.withUserId)
      assert.is_table(assert(acc:call("access.chats.deleteMessages",
        { userId = "1", messageId = "2", withUserId = 7 })))
    end)
    it("keeps 64-bit integers exact in request bodies", function()
      local big = (1 << 53) + 1
      local res = assert(acc:request("POST", "/unknown/echo", { body = { mediaIds = { 123456789012345, big } } }))
      assert.equal(123456789012345, res.body.mediaIds[1])
      assert.equal(big, res.body.mediaIds[2])
      assert.equal("integer", math.type(res.body.mediaIds[2]))
    end)
  end)

  describe("connections: import, update-import, settings", function()
    it("imports a session as a connection, refreshes it, keeps its settings", function()
      local c = assert(client:call("account.connections.createImport", { cookie = "auth_id=9; sess=s; fp=f",
        userAgent = "Mozilla/5.0", clientReferenceId = "imported-user", permissions = { "profile:read" } }))
      assert.matches("^conn_", c.id)
      assert.is_true(c.imported)
      assert.same({ "profile:read" }, c.permissions)
      local _, err = client:call("account.connections.createImport", { cookie = "x=1", userAgent = "ua" })
      assert.equal("api", err.kind)
      assert.equal(400, err.status)
      assert.equal(200, (ctl("POST", "/emulator/connections/" .. c.id .. "/expire")))
      local again = assert(client.account.connections:update_import({ connectionId = c.id,
        cookie = "auth_id=9; sess=t; fp=f", userAgent = "Mozilla/5.0" }))
      assert.equal(c.id, again.id)
      assert.equal("active", again.status)
      assert(client:call("account.connections.updateSettings", { connectionId = c.id,
        vaultPlus = { enabled = true } }))
      local s = assert(client:call("account.connections.getSettings", { connectionId = c.id }))
      assert.is_true(s.vaultPlus.enabled)
      assert.is_table(client:access(c.id):call("self.get"))
    end)
  end)

  describe("Link status", function()
    it("goes initialized -> pending -> awaiting_2fa -> completed", function()
      local link = require("ofauth.link")
      local s = assert(client:link_init({ redirect_url = REDIRECT, client_reference_id = "twofa" }))
      assert.is_number(s.expires_at)
      local secret = s.client_secret
      assert.equal("initialized", assert(link.status(client, secret)).status)
      assert.equal(200, (http.request({ url = s.url })).status) -- the user opens the page
      assert.equal("pending", assert(client:call("link.get", { clientSecret = secret })).status)
      local session = s.url:match("/link/([^/?#]+)")
      assert.equal(200, (ctl("POST", "/emulator/link/" .. session .. "/2fa", { options = { "phone", "app" } })))
      local st = assert(link.wait(client, secret, { interval = 0.01, timeout = 1 }))
      assert.equal("awaiting_2fa", st.status)
      assert.same({ "phone", "app" }, st.data.twoFactorState.options)
      assert.equal(200, (ctl("POST", "/emulator/link/" .. session .. "/complete", {})))
      st = assert(link.wait(client, secret, { interval = 0.01, timeout = 1 }))
      assert.equal("completed", st.status)
      assert.matches("^conn_", st.data.id)
      assert.is_string(st.data.userData.username)
      assert.is_table(st.data.session)
    end)
  end)

  describe("proxy", function()
    it("reaches /v2/access/proxy/<path>, dropping a leading /api2/v2", function()
      local me = assert(acc:proxy("GET", "/api2/v2/users/me"))
      assert.is_string(me.username)
      local r = assert(acc:proxy("POST", "/messages/queue", { body = { text = "hi" }, query = { a = 1 } }))
      assert.equal("/messages/queue", r.path)
      assert.equal("hi", r.body.text)
    end)
  end)
end)
