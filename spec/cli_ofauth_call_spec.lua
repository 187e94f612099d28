-- oflua ofauth call / ops / upload against the emulator (the CLI runs as a
-- subprocess; the emulator in this process).
local h = require("spec.helper")
local cjson = require("cjson")
local http = require("oflua.http")
local ojson = require("ofauth.json")

local API_KEY = "sk_test_cli_call_" .. require("oflua.crypto").hex(require("oflua.crypto").random(6))
local emu, conn, tmpdir

local function env()
  return { env = { OFAUTH_API_KEY = API_KEY, OFAUTH_BASE_URL = emu:url(), OFAUTH_LOG = "error" } }
end

setup(function()
  tmpdir = h.tmpdir()
  emu = assert(require("ofauth.emulator").start({ api_keys = { API_KEY }, upload_part_size = 1000 }))
  local c = assert(require("ofauth").client({ api_key = API_KEY, base_url = emu:url() }))
  local res = assert(c:link_init({ redirect_url = "http://127.0.0.1:1/cb", client_reference_id = "cli" }))
  local r = assert(http.request({ method = "POST", url = emu:url() .. "/emulator/link/"
    .. res.url:match("/link/([^/?#]+)") .. "/complete", body = "{}",
    headers = { ["content-type"] = "application/json" } }))
  conn = cjson.decode(r.body).connectionId
end)

teardown(function()
  if emu then emu:stop() end
  os.execute("rm -rf " .. h.shq(tmpdir))
end)

describe("oflua ofauth ops", function()
  it("lists the catalogue, filtered", function()
    local out, err, code = h.oflua({ "ofauth", "ops", "earnings" })
    assert.equal(0, code, err)
    assert.matches("access.earnings.listTransactions%s+GET%s+/v2/access/earnings/transactions%s+earnings:read", out)
    assert.matches("3 operation(s)", err, 1, true)
    out = h.oflua({ "ofauth", "ops", "--json" })
    assert.equal(126, #cjson.decode(out))
  end)
end)

describe("oflua ofauth call", function()
  it("calls an account operation and prints its JSON answer", function()
    local out, err, code = h.oflua({ "ofauth", "call", "account.whoami" }, env())
    assert.equal(0, code, err)
    assert.is_table(cjson.decode(out).permissions)
  end)

  it("types field=value from the catalogue and needs --connection for Access", function()
    local _, err, code = h.oflua({ "ofauth", "call", "access.vault.listMedia", "limit=2" }, env())
    assert.equal(1, code)
    assert.matches("needs --connection ID", err, 1, true)
    local out
    out, err, code = h.oflua({ "ofauth", "call", "access.vault.listMedia", "limit=2", "--connection", conn }, env())
    assert.equal(0, code, err)
    local page = ojson.decode(out)
    assert.equal(2, #page.list)
    assert.is_true(page.list[1].id > (1 << 53)) -- printed exactly
    _, err, code = h.oflua({ "ofauth", "call", "access.vault.listMedia", "limit=two", "--connection", conn }, env())
    assert.equal(1, code)
    assert.matches("limit must be a number", err, 1, true)
    _, err, code = h.oflua({ "ofauth", "call", "access.vault.listMedia", "lmit=2", "--connection", conn }, env())
    assert.equal(1, code)
    assert.matches("unknown field lmit", err, 1, true)
  end)

  it("pages through every item with --all as JSON lines or CSV, into --out", function()
    local _
    local out, err, code = h.oflua({ "ofauth", "call", "access.earnings.listTransactions", "--all",
      "--connection", conn }, env())
    assert.equal(0, code, err)
    local n = 0
    for line in out:gmatch("[^\n]+") do
      n = n + 1
      assert.is_table(cjson.decode(line))
    end
    assert.equal(require("ofauth.emulator.generic").ITEMS, n)
    local file = tmpdir .. "/posts.csv"
    _, err, code = h.oflua({ "ofauth", "call", "access.listPosts", "limit=7", "--all", "--csv", "--out", file,
      "--connection", conn }, env())
    assert.equal(0, code, err)
    local csv = h.slurp(file)
    local lines = {}
    for line in csv:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(26, #lines)
    assert.matches("^canComment,", lines[1])
    _, err, code = h.oflua({ "ofauth", "call", "account.whoami", "--all" }, env())
    assert.equal(1, code)
    assert.matches("not paginated", err, 1, true)
  end)

  it("takes raw JSON with field:=JSON", function()
    local out, err, code = h.oflua({ "ofauth", "call", "access.vault.lists.createMedia", "listId=5",
      "mediaIds:=[9007199254740993]", "--connection", conn }, env())
    assert.equal(0, code, err)
    assert.is_table(cjson.decode(out))
  end)
end)

describe("oflua ofauth upload", function()
  it("uploads a file in parts and prints the final answer", function()
    local file = tmpdir .. "/pic.png"
    h.write_file(file, ("p"):rep(2500))
    local out, err, code = h.oflua({ "ofauth", "upload", file, "--connection", conn }, env())
    assert.equal(0, code, err)
    local res = cjson.decode(out)
    assert.equal(2500, res.media.size)
    assert.equal("pic.png", res.media.filename)
    local _
    _, err, code = h.oflua({ "ofauth", "upload", tmpdir .. "/x.unknownext", "--connection", conn }, env())
    assert.equal(1, code)
    assert.matches("--content-type", err, 1, true)
  end)
end)
