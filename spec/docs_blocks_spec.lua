-- The docs stay true: every shell block (```sh / ```bash) of README.md and
-- docs/*.md is run, in order, one bash per file, in a fresh temporary
-- directory (with `build`, `examples` and `scripts` linked to the real ones),
-- against the local emulator it starts itself, with `set -e`: any failing
-- command fails the spec. A block that cannot run in a test (it installs
-- system-wide, needs a real API key or a person at a browser) is marked on
-- the line before its fence with
--   <!-- doc-test: skip: <reason> -->
-- and the reason is required. `<!-- doc-test: fresh -->` marks a block meant
-- for a new shell: what earlier blocks started is stopped first. The fixed ports of the docs (8788, 8080) are
-- replaced by free ones; background jobs are stopped at the end.
-- Also checked: README.md is at most 400 lines, and every docs/*.md carries
-- the table of contents `scripts/doctoc` generates from its headings.
local h = require("spec.helper")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function doc_files()
  local files = { "README.md" }
  local out = h.sh("cd " .. h.shq(h.source_dir) .. " && ls docs/*.md")
  for f in out:gmatch("[^\n]+") do files[#files + 1] = f end
  return files
end

--- The shell blocks of a Markdown text: {line, code, skip = reason|nil}.
local function blocks(text)
  local list, lines = {}, {}
  for l in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local i = 1
  while i <= #lines do
    local indent, lang = lines[i]:match("^(%s*)```(%a*)%s*$")
    if indent and lang ~= "" then
      local start = i
      local code = {}
      i = i + 1
      while i <= #lines and not lines[i]:match("^%s*```%s*$") do
        code[#code + 1] = lines[i]:sub(#indent + 1)
        i = i + 1
      end
      if lang == "sh" or lang == "bash" or lang == "shell" then
        local prev = start - 1
        while prev > 0 and lines[prev]:match("^%s*$") do prev = prev - 1 end
        local marker = prev > 0 and lines[prev]:match("<!%-%- doc%-test: skip(.-)%-%->") or nil
        local reason = marker and marker:match("^:%s*(.-)%s*$") or nil
        list[#list + 1] = { line = start, code = table.concat(code, "\n"), skip = reason,
          marked = marker ~= nil,
          fresh = prev > 0 and lines[prev]:match("<!%-%- doc%-test: fresh") ~= nil }
      end
    end
    i = i + 1
  end
  return list
end

local function free_port()
  local srv = assert(require("oflua.server").listen({ port = 0, workers = 1,
    script = h.source_dir .. "/spec/fixtures/servers/hello.lua" }))
  local port = srv:port()
  srv:close()
  return port
end

describe("the docs", function()
  it("README.md is a front door of at most 400 lines", function()
    local n = select(2, read(h.source_dir .. "/README.md"):gsub("\n", ""))
    assert.is_true(n <= 400, "README.md has " .. n .. " lines")
  end)

  it("every docs/*.md has an up-to-date table of contents (scripts/doctoc)", function()
    local out, err, code = h.sh("cd " .. h.shq(h.source_dir) .. " && " .. h.shq(h.bin)
      .. " scripts/lib/doctoc.lua --check docs/*.md")
    assert.equal(0, code, out .. err .. "\nrun scripts/doctoc to regenerate the tables of contents")
  end)

  for _, file in ipairs(doc_files()) do
    local list = blocks(read(h.source_dir .. "/" .. file))
    local runnable = {}
    for _, b in ipairs(list) do
      if b.marked then
        it(file .. ":" .. b.line .. " says why its block is not run", function()
          assert.is_truthy(b.skip and #b.skip > 10, "a doc-test skip marker needs a reason")
        end)
      else
        runnable[#runnable + 1] = b
      end
    end
    if #runnable > 0 then
      it(file .. ": its shell blocks run as written", function()
        local dir = h.tmpdir()
        local build = os.getenv("OFLUA_BUILD_DIR") or (h.source_dir .. "/build")
        local ports = { ["8788"] = tostring(free_port()), ["8080"] = tostring(free_port()) }
        local script = { "set -e", "trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT" }
        for _, b in ipairs(runnable) do
          if b.fresh then -- a block meant for a new shell: stop what earlier blocks started
            script[#script + 1] = "kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf .oflua"
          end
          script[#script + 1] = ("echo '--- %s:%d'"):format(file, b.line)
          script[#script + 1] = (b.code:gsub("%f[%d](%d%d%d%d)%f[%D]", function(p) return ports[p] end))
        end
        h.write_file(dir .. "/run.sh", table.concat(script, "\n") .. "\n")
        h.sh(("ln -s %s %s/build && ln -s %s/examples %s/examples && ln -s %s/scripts %s/scripts")
          :format(h.shq(build), h.shq(dir), h.shq(h.source_dir), h.shq(dir), h.shq(h.source_dir), h.shq(dir)))
        local out, err, code = h.sh("cd " .. h.shq(dir) .. " && timeout 120 bash run.sh")
        local leaked = h.sh("cd " .. h.shq(dir) .. " && ls -a")
        h.sh("rm -rf " .. h.shq(dir))
        assert.equal(0, code, ("%s:\n--- stdout\n%s\n--- stderr\n%s"):format(file, out, err))
        -- every block ran to its end (the markers of all of them are in the output)
        for _, b in ipairs(runnable) do
          assert.matches(("--- %s:%d"):format(file, b.line), out, 1, true)
        end
        if os.getenv("OFLUA_DOCS_VERBOSE") then io.stderr:write(out, err) end
        -- the tour keeps its files under .oflua/ (ignored by git), not in the checkout
        for _, name in ipairs({ "store.key", "app.db" }) do
          assert.not_matches("\n" .. name .. "\n", "\n" .. leaked, 1, true)
        end
      end)
    end
  end
end)
