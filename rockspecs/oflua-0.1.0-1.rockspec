-- LuaRocks package of oflua: the ofauth and oflua Lua modules, the native
-- modules (oflua.core, oflua.crypto, oflua.http, oflua.server, oflua.store)
-- and the `oflua` binary, built with CMake against the system libraries.
--   luarocks --lua-version 5.4 make rockspecs/oflua-0.1.0-1.rockspec   (from a checkout)
-- On Debian, lua-cjson comes from apt (lua-cjson, lua-cjson-dev), which
-- LuaRocks does not see as a rock: add --deps-mode=none there.
rockspec_format = "3.0"
package = "oflua"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/oflua/oflua.git",
  tag = "v0.1.0",
}
description = {
  summary = "Lua 5.4 with native HTTP, crypto and encrypted storage, and the ofauth library",
  detailed = [[
oflua gives Lua 5.4 fast native primitives (HTTP client on libcurl, HTTP
server on libmicrohttpd, HMAC/AEAD on OpenSSL, an encrypted SQLite store)
and, on top of them, ofauth: a complete OFAuth integration (Link flow, signed
webhooks with a durable inbox, encrypted connection storage, error policies,
metrics, a local emulator and an automated go-live check).
]],
  homepage = "https://github.com/oflua/oflua",
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson >= 2.1",
}
-- Libraries, not headers: Debian keeps curl/curl.h in a multiarch include
-- directory that LuaRocks 3.8 does not search. CMake checks every
-- dependency with pkg-config and names the Debian package when one is missing.
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { library = "crypto" },
  SQLITE = { library = "sqlite3" },
  MICROHTTPD = { library = "microhttpd" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    -- Lua files and C modules into the rock's lua/ and lib/ (LuaRocks then
    -- deploys them to the tree's share/lua/5.4 and lib/lua/5.4), the binary
    -- into bin/; no liboflua, header or tests.
    OFLUA_INSTALL_LMOD_DIR = "$(LUADIR)",
    OFLUA_INSTALL_CMOD_DIR = "$(LIBDIR)",
    OFLUA_RUNTIME_REL_LMOD_DIR = "share/lua/5.4",
    OFLUA_RUNTIME_REL_CMOD_DIR = "lib/lua/5.4",
    OFLUA_INSTALL_DEV = "OFF",
    OFLUA_BUILD_TESTS = "OFF",
  },
}
