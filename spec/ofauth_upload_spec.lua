-- Uploads (ofauth.upload) against the emulator: single PUT, numbered parts,
-- a failed part sent again alone, bad input refused before sending.
local cjson = require("cjson")
local http = require("oflua.http")
local emulator = require("ofauth.emulator")
local ofauth_client = require("ofauth.client")
local helper = require("spec.helper")

local KEY = "sk_test_upload_spec"
local PART = 1000

describe("acc:upload", function()
  local emu, client, acc

  local function ctl(method, path, body)
    local r = assert(http.request({ method = method, url = emu:url() .. path, timeout_ms = 10000,
      body = body and cjson.encode(body), headers = { ["content-type"] = "application/json" } }))
    return r.status, cjson.decode(r.body)
  end

  setup(function()
    emu = assert(emulator.start({ api_keys = { KEY }, upload_part_size = PART }))
    client = assert(ofauth_client.new({ api_key = KEY, base_url = emu:url(), timeout_ms = 5000,
      policy = { max_attempts = 1 } }))
    local s = assert(client:link_init({ redirect_url = "http://127.0.0.1:3000/cb", client_reference_id = "u" }))
    local _, b = ctl("POST", "/emulator/link/" .. s.url:match("/link/([^/?#]+)") .. "/complete", {})
    acc = client:access(b.connectionId)
  end)
  teardown(function() if emu then emu:stop() end end)

  it("sends a small file in one PUT (no complete call)", function()
    local seen = {}
    local res = assert(acc:upload({ data = ("x"):rep(400), filename = "a.jpg", content_type = "image/jpeg",
      on_progress = function(p) seen[#seen + 1] = p end }))
    assert.is_string(res.mediaUploadId)
    assert.equal("photo", res.media.type)
    assert.equal(400, res.media.size)
    assert.equal(1, #seen)
    assert.same({ 400, 400, 1, 1 }, { seen[1].sent, seen[1].total, seen[1].part, seen[1].parts })
  end)

  it("sends a larger file from disk in numbered parts, then completes", function()
    local dir = helper.tmpdir()
    local path = dir .. "/clip.mp4"
    local data = {}
    for i = 1, 2500 do data[i] = string.char(i % 256) end
    helper.write_file(path, table.concat(data))
    local seen = {}
    local res = assert(acc:upload({ path = path, content_type = "video/mp4",
      on_progress = function(p) seen[#seen + 1] = p.sent end }))
    assert.equal("video", res.media.type)
    assert.equal("clip.mp4", res.media.filename)
    assert.same({ 1000, 2000, 2500 }, seen)
    os.remove(path)
  end)

  it("sends a failed part again alone", function()
    local id
    local res = assert(acc:upload({ data = ("y"):rep(2500), content_type = "video/mp4",
      on_progress = function(p)
        if p.part == 1 then
          id = p.media_upload_id
          -- the next PUT of part 2 fails once with a 503
          local status = ctl("POST", "/emulator/faults", { kind = "server_error", status = 503,
            path_prefix = "/v2/access/uploads/" .. id .. "/parts/2" })
          assert.equal(201, status)
        end
      end }))
    assert.equal(res.mediaUploadId, id)
    local _, faults = ctl("GET", "/emulator/faults")
    assert.equal(0, #faults.list) -- the fault was met
  end)

  it("counts each part PUT: the parts before the failure are not sent again", function()
    local app = require("ofauth.emulator").new_local({ api_keys = { KEY }, upload_part_size = PART })
    local transport = function(req)
      local path, q = req.url:match("^https?://[^/]+([^?]*)%??(.*)$")
      local status, body, headers = app.app:handle({ method = req.method, path = path, query = {},
        raw_query = q, headers = req.headers, body = req.body })
      return { status = status, body = body, headers = headers or {} }
    end
    local c = assert(ofauth_client.new({ api_key = KEY, base_url = "http://127.0.0.1:1", http = transport,
      policy = { max_attempts = 1 } }))
    local conn = app.app.model:create_connection("u", "sandbox")
    local a = c:access(conn.id)
    app.app.faults:add({ kind = "server_error", status = 500, path_prefix = "/v2/access/uploads/mu_1/parts/3" })
    local res = assert(a:upload({ data = ("z"):rep(3500), content_type = "image/png" }))
    assert.equal("mu_1", res.mediaUploadId)
    local u = app.app.uploads.mu_1
    assert.same({ 1, 1, 1, 1 }, u.puts) -- part 3 failed before reaching the handler, then went once
  end)

  it("refuses bad input before sending anything", function()
    local _, err = acc:upload({ data = "abc", content_type = "nonsense" })
    assert.equal("invalid", err.kind)
    _, err = acc:upload({ data = "", content_type = "image/png" })
    assert.equal("invalid", err.kind)
    _, err = acc:upload({ path = "/nonexistent/file", content_type = "image/png" })
    assert.equal("invalid", err.kind)
    assert.has_error(function() acc:upload({ content_type = "image/png" }) end)
  end)
end)
