-- luacheck: ignore 311 (specs reuse out/err/code across several runs)
-- The CLI conventions (oflua.cliutil) held by every command: its own --help
-- with every flag and environment variable, `oflua help CMD [SUB]`,
-- did-you-mean, usage errors (exit 2) before any request, JSON errors, and
-- terminal behaviour (progress erased, never mixed into a table; colour only
-- on a terminal, off with NO_COLOR or --no-color) under `script`, which gives
-- the command a pseudo-terminal.
local h = require("spec.helper")
local cjson = require("cjson")

-- Every command and its subcommands, from the binary's own completion list.
local function words(...)
  local out, err, code = h.oflua({ "help", "--complete", ... })
  assert.equal(0, code, err)
  local list = {}
  for w in out:gmatch("[^\n]+") do list[#list + 1] = w end
  return list
end

local function commands()
  local list = {}
  for _, w in ipairs(words()) do
    if not w:match("^%-") then list[#list + 1] = w end
  end
  return list
end

local function subcommands(cmd)
  local list = {}
  for _, w in ipairs(words(cmd)) do
    if not w:match("^%-") then list[#list + 1] = w end
  end
  return list
end

-- Run under a pseudo-terminal: stdout and stderr are the terminal.
local function tty(args, env)
  local parts = {}
  for _, a in ipairs(args) do parts[#parts + 1] = h.shq(a) end
  local inner = h.shq(h.bin) .. " " .. table.concat(parts, " ")
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. h.shq(v) .. " " end
  local out, err, code = h.sh(prefix .. "TERM=xterm timeout 60 script -qec " .. h.shq(inner) .. " /dev/null")
  return out, err, code
end

-- What a terminal shows: "\r\27[K" erases the line, "\r\n" ends one.
local function screen(raw)
  local lines = {}
  for line in (raw .. "\n"):gmatch("(.-)\n") do
    line = line:gsub("\r$", "")
    lines[#lines + 1] = line:match(".*\r\27%[K(.*)$") or line
  end
  if lines[#lines] == "" then lines[#lines] = nil end
  return lines
end

describe("every command", function()
  it("prints its own usage, flags and environment with --help and via oflua help", function()
    local cmds = commands()
    assert.is_true(#cmds >= 9)
    for _, c in ipairs(cmds) do
      local out, err, code = h.oflua({ c, "--help" })
      if c == "help" then out, err, code = h.oflua({ "help", "--help" }) end
      assert.equal(0, code, c .. ": " .. err)
      assert.matches("^usage: oflua " .. c:gsub("%-", "%%-"), out)
      assert.matches("\nOptions:\n", out, 1, true)
      assert.matches("--no-color", out, 1, true)
      if c ~= "help" then assert.equal(out, (h.oflua({ "help", c })), c) end
      for _, s in ipairs(subcommands(c)) do
        local sout, serr, scode = h.oflua({ c, s, "--help" })
        assert.equal(0, scode, c .. " " .. s .. ": " .. serr)
        assert.matches("^usage: oflua " .. c .. " " .. s:gsub("%-", "%%-"), sout)
        assert.equal(sout, (h.oflua({ "help", c, s })), c .. " " .. s)
        -- every flag the completion knows is in the help text
        for _, w in ipairs(words(c, s)) do assert.matches(w, sout, 1, true) end
      end
    end
  end)

  it("lists the environment variables it reads", function()
    assert.matches("Environment:\n.*OFAUTH_WEBHOOK_SECRET", (h.oflua({ "webhook", "trigger", "--help" })))
    assert.matches("Environment:\n.*OFAUTH_API_KEY.*OFAUTH_LOG", (h.oflua({ "ofauth", "whoami", "--help" })))
    assert.matches("Environment:\n.*OFLUA_STORE", (h.oflua({ "inbox", "list", "--help" })))
  end)

  it("suggests the command or flag meant, with exit status 2", function()
    local out, err, code = h.oflua({ "servee" })
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("unknown command or script 'servee'", err, 1, true)
    assert.matches("Did you mean this?\n\toflua serve", err, 1, true)
    out, err, code = h.oflua({ "webhook", "trigerr" })
    assert.equal(2, code)
    assert.matches("Did you mean this?\n\ttrigger", err, 1, true)
    out, err, code = h.oflua({ "webhook", "trigger", "--urll", "http://127.0.0.1:1/" })
    assert.equal(2, code)
    assert.matches("unknown option '--urll'", err, 1, true)
    assert.matches("\t--url", err, 1, true)
    assert.matches("Run 'oflua webhook trigger --help' for usage.", err, 1, true)
    out, err, code = h.oflua({ "help", "stor" })
    assert.equal(2, code)
    assert.matches("\tstore", err, 1, true)
  end)

  it("refuses extra arguments and out-of-range numbers before any request", function()
    -- nothing listens on port 1: a request would fail with status 1, not 2
    local env = { OFAUTH_API_KEY = "sk_test_x", OFAUTH_BASE_URL = "http://127.0.0.1:1" }
    for _, args in ipairs({
      { "ofauth", "whoami", "extra" },
      { "ofauth", "connections", "--page-size", "0" },
      { "ofauth", "connections", "--page-size", "1.5" },
      { "ofauth", "subscribers", "--connection", "conn_x", "--max", "-1" },
      { "ofauth", "subscribers", "--connection", "conn_x", "--type", "everyone" },
      { "doctor", "--timeout-ms", "-5" },
      { "serve", "--port", "70000", "app.lua" },
      { "version", "now" },
      { "store", "keygen", "extra" },
      { "inbox", "show" },
      { "webhook", "sign", "--timestamp", "abc" },
    }) do
      local out, err, code = h.oflua(args, { env = env })
      assert.equal(2, code, table.concat(args, " ") .. ": " .. err)
      assert.equal("", out, table.concat(args, " "))
      assert.matches("^oflua [%w%-]+: [^\n]+\nRun 'oflua [%w %-]+ %-%-help' for usage%.\n$", err)
      assert.not_matches("internal error", err, 1, true)
    end
  end)

  it("gives errors as JSON with --json", function()
    local out, err, code = h.oflua({ "ofauth", "whoami", "--json" },
      { env = { OFAUTH_API_KEY = "sk_test_x", OFAUTH_BASE_URL = "http://127.0.0.1:1", OFAUTH_LOG = "off" } })
    assert.equal(1, code)
    assert.equal("", err)
    local e = cjson.decode(out).error
    assert.is_string(e.message)
    assert.equal(1, e.status)
  end)

  it("shares one secret check between the webhook subcommands", function()
    local env = { OFAUTH_WEBHOOK_SECRET = "not a whsec secret" }
    local _, err1, code1 = h.oflua({ "webhook", "sign" }, { env = env, stdin = "{}" })
    local _, err2, code2 = h.oflua({ "webhook", "trigger", "--url", "http://127.0.0.1:1/" }, { env = env })
    assert.equal(1, code1)
    assert.equal(1, code2)
    assert.equal(err1:gsub("^oflua webhook: ", ""), (err2:gsub("^oflua webhook: ", "")))
    assert.matches("not whsec_", err1, 1, true)
    local out = h.oflua({ "webhook", "sign", "--scheme", "checklist" }, { env = env, stdin = "{}" })
    assert.matches("^ofauth%-signature: t=", out)
  end)

  it("names the missing signature header", function()
    local secret = require("ofauth.webhooks").new_secret()
    local _, err, code = h.oflua({ "webhook", "verify", "--secret", secret, "--header", "svix-id: msg_1",
      "--header", "svix-timestamp: 1" }, { stdin = "{}" })
    assert.equal(1, code)
    assert.matches("missing header svix-signature", err, 1, true)
    _, err = h.oflua({ "webhook", "verify", "--secret", secret, "--header", "x-other: 1" }, { stdin = "{}" })
    assert.matches("no signature header", err, 1, true)
  end)
end)

describe("on a terminal", function()
  local emu, conn
  local KEY = "sk_test_cli_conv"

  setup(function()
    emu = assert(require("ofauth.emulator").start({ api_keys = { KEY }, subscribers = 230, log = false }))
    local c = assert(require("ofauth").client({ api_key = KEY, base_url = emu:url() }))
    local res = assert(c:link_init({ redirect_url = "http://127.0.0.1:1/cb", client_reference_id = "tty-user" }))
    local resp = assert(require("oflua.http").request({ method = "POST",
      url = emu:url() .. "/emulator/link/" .. res.url:match("/link/([^/?#]+)") .. "/complete",
      body = '{"outcome":"success"}', headers = { ["content-type"] = "application/json" } }))
    conn = cjson.decode(resp.body).connectionId
  end)
  teardown(function() if emu then emu:stop() end end)

  local function env(extra)
    local e = { OFAUTH_API_KEY = KEY, OFAUTH_BASE_URL = emu:url(), OFAUTH_LOG = "error" }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  it("erases the progress line before every row: the table stays clean", function()
    local raw, _, code = tty({ "ofauth", "subscribers", "--connection", conn, "--page-size", "10", "--no-color" },
      env())
    assert.equal(0, code)
    assert.matches("rows/s", raw, 1, true) -- it was drawn
    local lines = screen(raw)
    assert.equal(231, #lines, raw:sub(1, 400)) -- header + 230 rows, no stray line
    for _, l in ipairs(lines) do assert.not_matches("rows/s", l, 1, true) end
    assert.matches("^id%s+username%s+name", lines[1])
  end)

  it("draws no progress when stderr is not a terminal", function()
    local out, err, code = h.oflua({ "ofauth", "subscribers", "--connection", conn, "--format", "csv" },
      { env = env() })
    assert.equal(0, code, err)
    assert.equal("", err)
    assert.not_matches("\r", out, 1, true)
  end)

  it("colours on a terminal only, and never with NO_COLOR or --no-color", function()
    local raw = tty({ "ofauth", "connections" }, env())
    assert.matches("\27[1m", raw, 1, true)
    raw = tty({ "ofauth", "connections" }, env({ NO_COLOR = "1" }))
    assert.not_matches("\27[1m", raw, 1, true)
    raw = tty({ "ofauth", "connections", "--no-color" }, env())
    assert.not_matches("\27[1m", raw, 1, true)
    local out = h.oflua({ "ofauth", "connections" }, { env = env() })
    assert.not_matches("\27", out, 1, true)
  end)

  it("pads columns by display width (multi-byte ids stay aligned)", function()
    local out = h.oflua({ "ofauth", "connections" }, { env = env() })
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.is_true(#lines >= 2)
    local cli = require("oflua.cliutil")
    -- the "status" column starts at the same display column in every line
    local col = cli.width(lines[1]:match("^(.-)status"))
    for i = 2, #lines do
      local before = lines[i]:match("^(%S+%s+)")
      assert.equal(col, cli.width(before), lines[i])
    end
  end)

  it("silences retry log lines with --quiet", function()
    local faults = require("ofauth.emulator.faults")
    -- a fresh emulator per run: its one 429 makes the client retry once
    local function whoami(extra)
      local busy = assert(require("ofauth.emulator").start({ api_keys = { KEY }, log = false,
        faults = { assert(faults.parse_spec("rate_limit,count=1,retry_after=0")) } }))
      local args = { "ofauth", "whoami" }
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local out, err, code = h.oflua(args, { env = { OFAUTH_API_KEY = KEY, OFAUTH_BASE_URL = busy:url() } })
      busy:stop()
      return out, err, code
    end
    local _, err, code = whoami({})
    assert.equal(0, code, err)
    assert.matches("ofauth.retry", err, 1, true)
    _, err, code = whoami({ "--quiet" })
    assert.equal(0, code, err)
    assert.equal("", err)
  end)
end)

describe("the REPL", function()
  it("edits lines and keeps a history on a terminal (libedit)", function()
    local dir = h.tmpdir()
    local hist = dir .. "/history"
    local out = h.sh(("OFLUA_HISTORY=%s TERM=xterm timeout 30 script -qec %s /dev/null")
      :format(h.shq(hist), h.shq(h.shq(h.bin) .. " -i")), { stdin = "x = 6*7\n=x\n" })
    assert.matches("42", out, 1, true)
    local saved = h.slurp(hist)
    os.execute("rm -rf " .. h.shq(dir))
    assert.matches("=x", saved, 1, true)
  end)

  it("reads plain lines when stdin is not a terminal", function()
    local out, _, code = h.oflua({ "-i" }, { stdin = "print(6*7)\n" })
    assert.equal(0, code)
    assert.matches("42", out, 1, true)
  end)
end)
