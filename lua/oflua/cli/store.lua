-- oflua store: the encrypted store: get, put, delete, list, rekey, keygen
--
-- A thin user of oflua.store. The store (a SQLite file or a postgresql://
-- URL) comes from --store or $OFLUA_STORE; the master key from --key-file, $OFLUA_STORE_KEY_FILE or
-- $OFLUA_STORE_KEY (in that order). Every failure is one line on stderr and
-- exit status 1; the key, keys and values never appear in a message.
local cli = require("oflua.cliutil")
local core = require("oflua.core")

local USAGE = [[
usage: oflua store <command> [options] [args]

Commands:
  get KEY                  print the value stored under KEY
  put KEY [VALUE | -]      store VALUE under KEY (read from stdin when VALUE is '-' or absent)
  delete KEY               delete KEY
  list [PREFIX]            list the keys (starting with PREFIX); --values, --json
  rekey --new-key-file F   re-encrypt the whole store under the key in F
  keygen [--out FILE]      print a new key, or write it to FILE with mode 0600

Options:
  --store PATH|URL   the store: a SQLite file, or a postgresql://user@host:port/db URL
                     (password from PGPASSFILE preferably) (default: $OFLUA_STORE)
  --key-file FILE    file holding the base64 master key, mode 0600
                     (default: $OFLUA_STORE_KEY_FILE, else the key itself in $OFLUA_STORE_KEY)
  --namespace NAME   the namespace inside the store (default: "default")
  -h, --help         this help; 'oflua store <command> --help' for one command
]]

local COMMON = { store = "string", key_file = "string", namespace = "string" }

local function with(extra)
  local t = {}
  for k, v in pairs(COMMON) do t[k] = v end
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local COMMANDS = {
  get = {
    args = "KEY",
    help = "Prints the value stored under KEY exactly (binary-safe; a newline is added only on a "
      .. "terminal).\nExit status 1 if KEY is absent.",
    spec = { options = with() },
  },
  put = {
    args = "KEY [VALUE | -]",
    help = "Stores VALUE under KEY, replacing any previous value. Without VALUE, or with '-', the\n"
      .. "value is read from stdin (prefer this for secrets: a command line is visible to other\n"
      .. "users in ps). Creates the store file (mode 0600) if it does not exist.",
    spec = { options = with() },
  },
  delete = {
    args = "KEY",
    help = "Deletes KEY. Exit status 1 if it was absent.",
    spec = { options = with() },
  },
  list = {
    args = "[PREFIX] [--values] [--json]",
    help = "Lists the keys starting with PREFIX, one per line, in insertion order.\n"
      .. "--values prints 'key<TAB>value' lines; --json prints [{\"key\":..,\"value\":..}, ...].\n"
      .. "Every key of the namespace is decrypted to test the prefix.",
    spec = { flags = { json = true, values = true }, options = with() },
  },
  rekey = {
    args = "--new-key-file FILE",
    help = "Re-encrypts every row (all namespaces) under the key in FILE (mode 0600; make one\n"
      .. "with 'oflua store keygen --out FILE'), in one transaction. Afterwards only the new\n"
      .. "key opens the store: point OFLUA_STORE_KEY_FILE (or OFLUA_STORE_KEY) at it.",
    spec = { options = with({ new_key_file = "string" }) },
  },
  keygen = {
    args = "[--out FILE]",
    help = "Prints a new random master key (base64 of 32 bytes), or writes it to FILE with\n"
      .. "mode 0600 (an existing FILE is never overwritten).",
    spec = { options = { out = "string" } },
  },
}

local argv = { ... }
local name = argv[1]
if name == nil then
  io.stderr:write(USAGE)
  return 1
end
if name == "--help" or name == "-h" or name == "help" then
  io.write(USAGE)
  return 0
end
local cmd = COMMANDS[name]
if not cmd then cli.fail(("unknown command '%s' (see 'oflua store --help')"):format(name)) end
table.remove(argv, 1)
local opts = cli.parse(argv, cmd.spec)
if opts.help then
  io.write(("usage: oflua store %s %s [options]\n\n%s\n"):format(name, cmd.args, cmd.help))
  if name ~= "keygen" then
    io.write("\nOptions: --store PATH, --key-file FILE, --namespace NAME (see 'oflua store --help')\n")
  end
  return 0
end
local pos = opts._

local function strip(err)
  return (tostring(err):gsub("^oflua%.store: ", ""))
end

local function nargs(min, max)
  if #pos < min then cli.fail(("%s: missing argument (usage: oflua store %s %s)"):format(name, name,
      cmd.args)) end
  if #pos > max then cli.fail(("%s: too many arguments (usage: oflua store %s %s)"):format(name,
      name, cmd.args)) end
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
  nargs(0, 0)
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
  nargs(1, 1)
  local s <close> = open(false)
  local value = check(s:get(pos[1]))
  if value == nil then cli.fail("key not found") end
  io.write(value)
  if core.isatty(1) and value:sub(-1) ~= "\n" then io.write("\n") end
  return 0
end

if name == "put" then
  nargs(1, 2)
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
  nargs(1, 1)
  local s <close> = open(false)
  if not check(s:delete(pos[1])) then cli.fail("key not found") end
  return 0
end

if name == "list" then
  nargs(0, 1)
  local s <close> = open(false)
  local rows = {}
  local ok, err = pcall(function()
    for k, v in s:list(pos[1] or "") do
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
  nargs(0, 0)
  if not opts.new_key_file then cli.fail("rekey: give --new-key-file FILE (make one with "
    .. "'oflua store keygen --out FILE')") end
  local s <close> = open(false)
  local ok, rows = s:rekey({ key_file = opts.new_key_file })
  if not ok then cli.fail(strip(rows)) end
  io.stderr:write(("re-encrypted %d rows; the store now opens only with the key in %s\n")
    :format(rows, opts.new_key_file))
  return 0
end
