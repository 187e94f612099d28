--- Configuration from flags, then environment variables, in one place.
--
--   OFAUTH_API_KEY         API key (Sandbox or Production decides the environment)
--   OFAUTH_BASE_URL        API base URL (default https://api.ofauth.com)
--   OFAUTH_WEBHOOK_SECRET  webhook signing secret (whsec_... for Svix, raw for the checklist scheme)
--   OFLUA_STORE            the encrypted store: a SQLite file path, or a
--                          postgresql://user@host:port/db URL (many hosts, one database)
--   OFLUA_STORE_KEY        store master key (base64 of 32 bytes), or
--   OFLUA_STORE_KEY_FILE   a file holding it (mode 0600)
--
-- Each function takes the parsed flags (snake_case names) and returns the
-- object, or nil and a one-line message saying what to set.
local M = {}

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function pick(a, b)
  if a ~= nil and a ~= "" then return a end
  return b
end

function M.api_key(flags) return pick(flags.api_key, env("OFAUTH_API_KEY")) end
function M.base_url(flags) return pick(flags.base_url, env("OFAUTH_BASE_URL")) end
function M.webhook_secret(flags) return pick(flags.secret or flags.webhook_secret, env("OFAUTH_WEBHOOK_SECRET")) end

--- An ofauth client from --api-key/--base-url or the environment.
function M.client(flags, extra)
  local opts = { api_key = M.api_key(flags), base_url = M.base_url(flags) }
  for k, v in pairs(extra or {}) do opts[k] = v end
  local c, err = require("ofauth.client").new(opts)
  if not c then return nil, tostring(err.message or err) end
  return c
end

--- Whether a store path is configured at all (flag or OFLUA_STORE).
function M.store_configured(flags) return pick(flags.store, env("OFLUA_STORE")) ~= nil end

--- The store from --store/--key-file/--namespace or the environment.
function M.store(flags)
  local path = pick(flags.store, env("OFLUA_STORE"))
  if not path then return nil, "no store: pass --store PATH|URL or set OFLUA_STORE" end
  local key_file = pick(flags.key_file, env("OFLUA_STORE_KEY_FILE"))
  local key = not key_file and env("OFLUA_STORE_KEY") or nil
  if not key and not key_file then
    return nil, "no store key: set OFLUA_STORE_KEY or OFLUA_STORE_KEY_FILE (or pass --key-file); "
      .. "make one with 'oflua store keygen'"
  end
  local store = require("oflua.store")
  local where = store.is_url(path) and "url" or "path"
  local st, err = store.open({ [where] = path, key = key, key_file = key_file,
    namespace = flags.namespace })
  if not st then return nil, tostring(err) end
  return st
end

return M
