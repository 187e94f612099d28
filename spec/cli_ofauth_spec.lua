local h = require("spec.helper")

describe("oflua ofauth", function()
  it("shows usage with --help and exits 0", function()
    local out, _, code = h.oflua({ "ofauth", "--help" })
    assert.equal(0, code)
    assert.matches("usage: oflua ofauth", out, 1, true)
  end)

  it("fails with one line when no API key is configured", function()
    local out, err, code = h.oflua({ "ofauth", "whoami" })
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("oflua ofauth: no API key: pass api_key or set OFAUTH_API_KEY\n", err)
  end)

  it("rejects an unknown command and a bad format", function()
    -- usage errors: exit status 2, before any request
    local _, err, code = h.oflua({ "ofauth", "frob" })
    assert.equal(2, code)
    assert.matches("unknown command 'frob'", err, 1, true)
    _, err, code = h.oflua({ "ofauth", "connections", "--format", "xml" })
    assert.equal(2, code)
    assert.matches("--format must be one of: table, json, csv", err, 1, true)
  end)

  describe("user-docs", function()
    it("regenerates the committed example page exactly", function()
      local out, err, code = h.oflua({ "ofauth", "user-docs", "--app-name", "Acme Fan Tools",
        "--permissions", "profile,subscribers", "--contact", "support@acme.example",
        "--purpose", "show your subscriber growth and send you weekly reports",
        "--disconnect-where", "from Settings > Connected accounts" })
      assert.equal(0, code, err)
      assert.equal(h.slurp("examples/docs/connecting-your-onlyfans-account.md"), out)
    end)

    it("lists the data each chosen permission reads and nothing else", function()
      local out = h.oflua({ "ofauth", "user-docs", "--app-name", "X", "--permissions", "messages" })
      assert.matches("**messages**", out, 1, true)
      assert.not_matches("**profile**", out, 1, true)
      assert.not_matches("{{", out, 1, true)
    end)

    it("names the known permissions when given an unknown one", function()
      local _, err, code = h.oflua({ "ofauth", "user-docs", "--app-name", "X", "--permissions", "foo" })
      assert.equal(1, code)
      assert.matches("unknown permission 'foo' %(known: .*profile", err)
    end)

    it("requires an app name", function()
      local _, err, code = h.oflua({ "ofauth", "user-docs", "--permissions", "profile" })
      assert.equal(1, code)
      assert.matches("--app-name is required", err, 1, true)
    end)
  end)
end)
