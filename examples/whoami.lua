--- Check an OFAuth API key: which account it belongs to and which environment.
--
--   OFAUTH_API_KEY=sk_test_... oflua examples/whoami.lua [--json]
--
-- Configuration comes from the environment (OFAUTH_API_KEY, OFAUTH_BASE_URL);
-- the client retries network errors, 5xx and 429 by its default policy
-- (ofauth.policy). Exit status: 0 when the key works, 1 otherwise, with the
-- error on stderr (never the key: errors are redacted when they are made).
local cjson = require("cjson")
local ofauth = require("ofauth")

local as_json = false
for _, a in ipairs({ ... }) do
  if a == "--json" then
    as_json = true
  elseif a == "-h" or a == "--help" then
    print("usage: oflua examples/whoami.lua [--json]   (OFAUTH_API_KEY, OFAUTH_BASE_URL)")
    os.exit(0, true)
  else
    io.stderr:write("whoami: unknown argument ", a, "\n")
    os.exit(2, true)
  end
end

-- No api_key option: the client reads OFAUTH_API_KEY (and OFAUTH_BASE_URL).
local client, err = ofauth.client()
if not client then
  io.stderr:write("whoami: ", tostring(err), "\n")
  os.exit(1, true)
end

local me
me, err = client:whoami()
if not me then
  io.stderr:write("whoami: ", tostring(err), "\n")
  if err.status == 401 or err.status == 403 then
    io.stderr:write("hint: the key was refused; copy it again from the OFAuth dashboard ",
      "(Sandbox and Production keys differ)\n")
  elseif err.kind == "network" then
    io.stderr:write("hint: check the network and OFAUTH_BASE_URL (", client.base_url, ")\n")
  end
  os.exit(1, true)
end

if as_json then
  print(cjson.encode(me))
else
  local perms = type(me.permissions) == "table" and table.concat(me.permissions, ", ") or "?"
  print(("account:     %s (%s)"):format(tostring(me.name or "?"), tostring(me.id or "?")))
  if me.environment then print("environment: " .. tostring(me.environment)) end
  print("permissions: " .. perms)
  print("api:         " .. client.base_url)
end
os.exit(0, true)
