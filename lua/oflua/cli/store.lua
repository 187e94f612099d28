-- oflua store: the encrypted store: get, put, delete, list, rekey, keygen
--
-- A thin user of oflua.store. The store (a SQLite file or a postgresql://
-- URL) comes from --store or $OFLUA_STORE; the master key from --key-file, $OFLUA_STORE_KEY_FILE or
-- $OFLUA_STORE_KEY (in that order). Every failure is one line on stderr and
-- exit status 1; the key, keys and values never appear in a message.
local cli = require("oflua.cliutil")
local core = require("oflua.core")

local COMMON = {
  { "store", "PATH|URL", "the store: a SQLite file, or a postgresql://user@host:port/db URL\n"
    .. "(password from PGPASSFILE preferably) (default: $OFLUA_STORE)" },
  { "key-file", "FILE", "file holding the base64 master key, mode 0600 (default: "
    .. "$OFLUA_STORE_KEY_FILE, else the key itself in $OFLUA_STORE_KEY)" },
  { "namespace", "NAME", "the namespace inside the store (default: \"default\")" },
}
local function with(extra)
  local t = {}
  for _, f in ipairs(extra or {}) do t[#t + 1] = f end
  for _, f in ipairs(COMMON) do t[#t + 1] = f end
  return t
end
local STORE_ENV = { "OFLUA_STORE", "OFLUA_STORE_KEY_FILE", "OFLUA_STORE_KEY" }

local cmd = cli.command({
  name = "store", summary = "the encrypted store: get, put, delete, list, rekey, keygen",
  description = "A thin user of oflua.store: every value is sealed with AES-256-GCM; keys, values and\n"
    .. "the master key never appear in a message.",
  subcommands = {
    { name = "get", args = "KEY", min_args = 1, max_args = 1, env = STORE_ENV, flags = with(),
      summary = "print the value stored under KEY",
      description = "Prints the value stored under KEY exactly (binary-safe; a newline is added only on a "
        .. "terminal).\nExit status 1 if KEY is absent." },
    { name = "put", args = "KEY [VALUE | -]", min_args = 1, max_args = 2, env = STORE_ENV, flags = with(),
      summary = "store VALUE under KEY (read from stdin when VALUE is '-' or absent)",
      description = "Stores VALUE under KEY, replacing any previous value. Without VALUE, or with '-', the\n"
        .. "value is read from stdin (prefer this for secrets: a command line is visible to other\n"
        .. "users in ps). Creates the store file (mode 0600) if it does not exist." },
    { name = "delete", args = "KEY", min_args = 1, max_args = 1, env = STORE_ENV, flags = with(),
      summary = "delete KEY", description = "Deletes KEY. Exit status 1 if it was absent." },
    { name = "list", args = "[PREFIX]", max_args = 1, env = STORE_ENV,
      flags = with({ { "values", false, "print 'key<TAB>value' lines" }, "json",
        { "reveal-ids", false, "print connection ids in full (they are credentials: shortened by default)" } }),
      summary = "list the keys (starting with PREFIX)",
      description = "Lists the keys starting with PREFIX, one per line, in insertion order, with\n"
        .. "connection ids shortened like the rest of the CLI (--reveal-ids for the full ids).\n"
        .. "--values prints 'key<TAB>value' lines; --json prints [{\"key\":..,\"value\":..}, ...].\n"
        .. "Every key of the namespace is decrypted to test the prefix." },
    { name = "rekey", max_args = 0, env = STORE_ENV,
      flags = with({ { "new-key-file", "FILE", "the new master key (required)" } }),
      summary = "re-encrypt the whole store under the key in --new-key-file",
      description = "Re-encrypts every row (all namespaces) under the key in FILE (mode 0600; make one\n"
        .. "with 'oflua store keygen --out FILE'), in one transaction. Afterwards only the new\n"
        .. "key opens the store: point OFLUA_STORE_KEY_FILE (or OFLUA_STORE_KEY) at it." },
    { name = "keygen", max_args = 0, flags = { { "out", "FILE", "write the key to FILE (mode 0600)" } },
      summary = "print a new key, or write it to FILE with mode 0600",
      description = "Prints a new random master key (base64 of 32 bytes), or writes it to FILE with\n"
        .. "mode 0600 (an existing FILE is never overwritten)." },
  },
})
local name, opts = cmd:parse({ ... })
if not name then return opts end -- usage printed; opts is the exit status
local pos = opts._

local function strip(err)
  return (tostring(err):gsub("^oflua%.store: ", ""))
end


local function open(create)
  local store = require("oflua.store")
  local path = cli.pick(opts.store, cli.env("OFLUA_STORE"))
  if not path then cli.fail("no store: give --store PATH|URL or set OFLUA_STORE") end
  if not (opts.key_file or cli.env("OFLUA_STORE_KEY_FILE") or cli.env("OFLUA_STORE_KEY")) then
    cli.fail("no store key: give --key-file FILE or set OFLUA_STORE_KEY_FILE or OFLUA_STORE_KEY")
  end
  local s, err = store.open_env({
    path = path,
    key_file = opts.key_file,
    namespace = opts.namespace,
    create = create,
  })
  if not s then cli.fail(strip(err)) end
  return s
end

local function check(ok, err)
  if ok == nil and err ~= nil then cli.fail(strip(err)) end
  return ok
end

if name == "keygen" then
  local store = require("oflua.store")
  local key = store.keygen()
  if opts.out then
    check(store.save_key(opts.out, key))
    io.stderr:write(("wrote a new key to %s (mode 0600)\n"):format(opts.out))
  else
    io.write(key, "\n")
  end
  return 0
end

if name == "get" then
  local s <close> = open(false)
  local value = check(s:get(pos[1]))
  if value == nil then cli.fail("key not found") end
  io.write(value)
  if core.isatty(1) and value:sub(-1) ~= "\n" then io.write("\n") end
  return 0
end

if name == "put" then
  local value = pos[2]
  if value == nil or value == "-" then
    if value == nil and core.isatty(0) then
      cli.fail("no value: give VALUE, or pipe it on stdin with '-'")
    end
    value = io.read("a") or ""
  end
  local s <close> = open(true)
  check(s:put(pos[1], value))
  return 0
end

if name == "delete" then
  local s <close> = open(false)
  if not check(s:delete(pos[1])) then cli.fail("key not found") end
  return 0
end

if name == "list" then
  local s <close> = open(false)
  local rows = {}
  local show = opts.reveal_ids and function(x) return x end or require("ofauth.redact").text
  local ok, err = pcall(function()
    for k, v in s:list(pos[1] or "") do
      k, v = show(k), show(v)
      if opts.json then
        rows[#rows + 1] = { key = k, value = v }
      elseif opts.values then
        io.write(k, "\t", v, "\n")
      else
        io.write(k, "\n")
      end
    end
  end)
  if not ok then cli.fail(strip(err)) end
  if opts.json then
    local cjson = require("cjson")
    io.write(#rows == 0 and "[]" or cjson.encode(rows), "\n")
  end
  return 0
end

if name == "rekey" then
  if not opts.new_key_file then cli.usage_error("rekey: give --new-key-file FILE (make one with "
    .. "'oflua store keygen --out FILE')", "oflua store rekey") end
  local s <close> = open(false)
  local ok, rows = s:rekey({ key_file = opts.new_key_file })
  if not ok then cli.fail(strip(rows)) end
  io.stderr:write(("re-encrypted %d rows; the store now opens only with the key in %s\n")
    :format(rows, opts.new_key_file))
  return 0
end
