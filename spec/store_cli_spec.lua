-- `oflua store`: success and failure paths of every command.
local h = require("spec.helper")
local core = require("oflua.core")
local backends = require("spec.support.store_backends")

local dirs = {}
teardown(function()
  for _, d in ipairs(dirs) do h.sh("rm -rf " .. h.shq(d)) end
  backends.cleanup()
end)

local function setup_dir()
  local out = h.sh("mktemp -d")
  local d = out:gsub("%s+$", "")
  dirs[#dirs + 1] = d
  return d
end

-- One line on stderr, exit status 1.
local function assert_fails(pattern, out, err, code)
  assert.equal(1, code)
  assert.equal("", out)
  assert.matches("^oflua store: [^\n]+\n$", err)
  if pattern then assert.matches(pattern, err) end
end

-- Runs on every backend (PostgreSQL when OFLUA_TEST_PG_URL is set): OFLUA_STORE
-- is a file or a postgresql:// URL.
for _, be in ipairs(backends.all()) do
  describe("oflua store on " .. be.name, function()
    local dir, env, key, db, db2
    before_each(function()
      dir = setup_dir()
      -- the store: a file, or a new database (not created until first written)
      if be.name == "sqlite" then
        db, db2 = dir .. "/s.db", dir .. "/x.db"
      else
        db, db2 = be.new(), be.new()
      end
      local out, _, code = h.oflua({ "store", "keygen", "--out", dir .. "/key" })
      assert.equal(0, code)
      assert.equal("", out)
      key = h.slurp(dir .. "/key"):gsub("\n$", "")
      env = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = dir .. "/key", OFLUA_STORE_KEY = "" }
    end)

    local function run(args, opts)
      opts = opts or {}
      opts.env = opts.env or env
      return h.oflua(args, opts)
    end

    it("keygen prints a key or writes it 0600 without overwriting", function()
      local out, _, code = run({ "store", "keygen" })
      assert.equal(0, code)
      assert.matches("^[A-Za-z0-9+/]+=\n$", out)
      assert.equal(45, #out)
      assert.equal(tonumber("600", 8), core.file_mode(dir .. "/key"))
      assert_fails(nil, run({ "store", "keygen", "--out", dir .. "/key" }))
      assert.equal(key .. "\n", h.slurp(dir .. "/key"))
    end)

    it("puts, gets, lists and deletes", function()
      local out, err, code = run({ "store", "put", "conn:a", "conn_111" })
      assert.equal(0, code, err)
      assert.equal("", out)
      assert.equal(0, select(3, run({ "store", "put", "conn:b", "-" }, { stdin = "bin\0ary\n" })))
      assert.equal(0, select(3, run({ "store", "put", "other" }, { stdin = "from stdin" })))
      out, err, code = run({ "store", "get", "conn:a" })
      assert.equal(0, code, err)
      assert.equal("conn_111", out)
      assert.equal("bin\0ary\n", (run({ "store", "get", "conn:b" })))
      assert.equal("conn:a\nconn:b\nother\n", (run({ "store", "list" })))
      assert.equal("conn:a\nconn:b\n", (run({ "store", "list", "conn:" })))
      -- connection ids are shortened like everywhere in the CLI, unless asked
      assert.equal("conn:a\tconn_…\n", (run({ "store", "list", "conn:a", "--values" })))
      assert.equal("conn:a\tconn_111\n", (run({ "store", "list", "conn:a", "--values", "--reveal-ids" })))
      local list = require("cjson").decode((run({ "store", "list", "conn:", "--json", "--reveal-ids" })))
      assert.same({ { key = "conn:a", value = "conn_111" }, { key = "conn:b", value = "bin\0ary\n" } },
        list)
      assert.equal("[]\n", (run({ "store", "list", "nothing", "--json" })))
      assert.equal(0, select(3, run({ "store", "delete", "other" })))
      assert_fails("key not found", run({ "store", "delete", "other" }))
      assert_fails("key not found", run({ "store", "get", "other" }))
    end)

    it("takes --store, --key-file and --namespace over the environment", function()
      local args = { "--store", db2, "--key-file", dir .. "/key", "--namespace", "n1" }
      local put = { "store", "put", "k", "v" }
      for _, a in ipairs(args) do put[#put + 1] = a end
      assert.equal(0, select(3, h.oflua(put, { env = { OFLUA_STORE = "", OFLUA_STORE_KEY_FILE = "" } })))
      local get = { "store", "get", "k" }
      for _, a in ipairs(args) do get[#get + 1] = a end
      assert.equal("v", (h.oflua(get, { env = {} })))
      assert_fails("key not found", run({ "store", "get", "k", "--store", db2 }))
    end)

    it("reads the key itself from OFLUA_STORE_KEY", function()
      local e = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = "", OFLUA_STORE_KEY = key }
      assert.equal(0, select(3, h.oflua({ "store", "put", "a", "1" }, { env = e })))
      assert.equal("1", (run({ "store", "get", "a" })))
    end)

    it("rekeys with --new-key-file", function()
      assert.equal(0, select(3, run({ "store", "put", "a", "1" })))
      assert.equal(0, select(3, run({ "store", "keygen", "--out", dir .. "/new" })))
      local out, err, code = run({ "store", "rekey", "--new-key-file", dir .. "/new" })
      assert.equal(0, code, err)
      assert.equal("", out)
      assert.matches("re%-encrypted 1 rows", err)
      assert_fails("wrong key", run({ "store", "get", "a" }))
      local e = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = dir .. "/new" }
      assert.equal("1", (h.oflua({ "store", "get", "a" }, { env = e })))
      local _, rerr, rcode = run({ "store", "rekey" })
      assert.equal(2, rcode) -- a usage error
      assert.matches("new%-key%-file", rerr)
    end)

    it("fails with one clear line and never shows the key", function()
      assert_fails(be.name == "sqlite" and "no store at" or "not an oflua store", run({ "store", "get", "a" }))
      assert.equal(0, select(3, run({ "store", "put", "a", "1" })))
      -- usage errors: exit status 2, a pointer to the right --help
      for _, c in ipairs({ { "unknown command 'frob'", { "store", "frob" } },
        { "missing argument", { "store", "get" } }, { "unexpected argument 'b'", { "store", "get", "a", "b" } },
        { "unknown option '%-%-bogus'", { "store", "get", "a", "--bogus" } } }) do
        local out, err, code = run(c[2])
        assert.equal(2, code)
        assert.equal("", out)
        assert.matches("^oflua store: " .. c[1], err)
        assert.matches("Run 'oflua store[ %w]*%-%-help' for usage", err)
      end
      assert_fails("no store", h.oflua({ "store", "get", "a" }, { env = { OFLUA_STORE = "" } }))
      assert_fails("no store key", h.oflua({ "store", "get", "a" }, {
        env = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = "", OFLUA_STORE_KEY = "" },
      }))
      local bad = "bm90IGEga2V5IGF0IGFsbA=="
      local out, err, code = h.oflua({ "store", "get", "a" }, {
        env = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = "", OFLUA_STORE_KEY = bad },
      })
      assert_fails("32 bytes", out, err, code)
      assert.is_nil(err:find(bad, 1, true))
      local wrong = (h.oflua({ "store", "keygen" })):gsub("\n", "")
      out, err, code = h.oflua({ "store", "get", "a" }, {
        env = { OFLUA_STORE = db, OFLUA_STORE_KEY_FILE = "", OFLUA_STORE_KEY = wrong },
      })
      assert_fails("wrong key", out, err, code)
      assert.is_nil(err:find(wrong, 1, true))
      assert.is_nil(err:find(key, 1, true))
      h.sh("chmod 644 " .. h.shq(dir .. "/key"))
      assert_fails("chmod 600", run({ "store", "get", "a" }))
    end)

    it("prints help for the command and each subcommand", function()
      local out, _, code = h.oflua({ "store", "--help" })
      assert.equal(0, code)
      assert.matches("usage: oflua store <command>", out)
      for _, c in ipairs({ "get", "put", "delete", "list", "rekey", "keygen" }) do
        out, _, code = h.oflua({ "store", c, "--help" })
        assert.equal(0, code)
        assert.matches("usage: oflua store " .. c, out)
      end
      local _, err
      _, err, code = h.oflua({ "store" })
      assert.equal(2, code)
      assert.matches("usage: oflua store", err)
      out = h.oflua({ "help" })
      assert.matches("store", out)
    end)
  end)
end
