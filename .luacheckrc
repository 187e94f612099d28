std = "lua54"
max_line_length = 110
codes = true
files["spec"] = { std = "+busted" }
exclude_files = { "build", "build-asan" }
