-- oflua version: print the versions of oflua and the libraries it embeds.
local cli = require("oflua.cliutil")
local core = require("oflua.core")
local cjson = require("cjson")

local cmd = cli.command({
  name = "version", summary = "print the versions of oflua and the libraries it embeds",
  max_args = 0,
  description = "Prints the versions of oflua, Lua, libcurl, OpenSSL, SQLite and libmicrohttpd.",
  flags = { "json" },
})
local ok, opts = cmd:parse({ ... })
if not ok then return opts end
local v = {}
for k, ver in pairs(core.versions) do v[k] = ver end
v.openssl = require("oflua.crypto").openssl_version
v.curl = require("oflua.http").curl_version
v.sqlite = require("oflua.store").sqlite_version
v.microhttpd = require("oflua.server").mhd_version
if opts.json then
  print(cjson.encode(v))
  return 0
end
print(("oflua %s"):format(v.oflua))
for _, k in ipairs({ "lua", "curl", "openssl", "sqlite", "microhttpd" }) do
  print(("  %-11s %s"):format(k, v[k]))
end
return 0
