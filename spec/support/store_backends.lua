--- The store backends a spec runs against: SQLite always, PostgreSQL when
-- OFLUA_TEST_PG_URL names a server (scripts/test runs the suite under
-- scripts/with-postgres, which sets it). Each backend gives a fresh empty
-- store location (a file, or a new database on the server) and runs raw SQL
-- against it the way an attacker with write access to the database would
-- (Debian's sqlite3 CLI, psql).
--
--   for _, be in ipairs(backends.all()) do describe("... on " .. be.name, ...) end
--   local target, dir = be.new()          -- a path or a postgresql:// URL, a temp dir
--   be.open_opts(target, key, extra)      -- options for store.open
--   be.sql(target, "SELECT ...")          -- rows as "a|b" lines
--   be.hex("col") / be.blob(hex)          -- dialect: blob as hex, hex literal
--   backends.cleanup()                    -- drop what new() made
local h = require("spec.helper")

local M = {}

local made_dirs, made_dbs = {}, {}

local function trim(s) return (s:gsub("%s+$", "")) end

local sqlite = { name = "sqlite" }

function sqlite.new()
  local d = h.tmpdir()
  made_dirs[#made_dirs + 1] = d
  return d .. "/store.db", d
end

function sqlite.open_opts(target, key, extra)
  local o = { path = target, key = key }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function sqlite.sql(target, statement)
  local out, err, code = h.sh(("sqlite3 -batch -cmd '.timeout 5000' %s %s"):format(h.shq(target),
    h.shq(statement)))
  assert(code == 0, "sqlite3 failed: " .. err)
  return trim(out)
end

function sqlite.hex(col) return ("hex(%s)"):format(col) end
function sqlite.blob(hex) return ("X'%s'"):format(hex) end
function sqlite.nonce(col) return ("substr(%s, 1, 12)"):format(col) end

local pg = { name = "postgresql" }
local base_url = os.getenv("OFLUA_TEST_PG_URL")
if base_url == "" then base_url = nil end
M.pg_url = base_url

local function psql(url, statement)
  local out, err, code = h.sh(("psql %s -AtX -q -v ON_ERROR_STOP=1 -c %s"):format(h.shq(url),
    h.shq(statement)))
  assert(code == 0, "psql failed: " .. err)
  return trim(out)
end
M.psql = psql

local seq = 0
--- A new empty database on the test server; returns its URL.
function pg.new()
  seq = seq + 1
  local name = ("oflua_t_%d_%d_%d"):format(os.time(), math.random(1, 1e6), seq)
  psql(base_url, "CREATE DATABASE " .. name)
  made_dbs[#made_dbs + 1] = name
  local d = h.tmpdir() -- for key files and the like, as with SQLite
  made_dirs[#made_dirs + 1] = d
  return (base_url:gsub("/[^/?]*$", "/" .. name)), d
end

function pg.open_opts(target, key, extra)
  local o = { url = target, key = key }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

pg.sql = psql
function pg.hex(col) return ("upper(encode(%s, 'hex'))"):format(col) end
function pg.blob(hex) return ("'\\x%s'::bytea"):format(hex) end
function pg.nonce(col) return ("substr(%s, 1, 12)"):format(col) end

M.sqlite, M.pg = sqlite, base_url and pg or nil

function M.all()
  local list = { sqlite }
  if base_url then list[#list + 1] = pg end
  return list
end

function M.cleanup()
  for _, d in ipairs(made_dirs) do h.sh("rm -rf " .. h.shq(d)) end
  made_dirs = {}
  for _, name in ipairs(made_dbs) do
    pcall(psql, base_url, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  end
  made_dbs = {}
end

return M
