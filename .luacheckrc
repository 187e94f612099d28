std = "lua54"
max_line_length = 120
codes = true
files["spec"] = { std = "+busted" }
exclude_files = { "build", "build-asan" }
-- the endpoint catalogue is data: one entry per line, as generated
files["lua/ofauth/catalogue.lua"] = { max_line_length = false }
