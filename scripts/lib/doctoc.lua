-- scripts/doctoc: (re)writes the table of contents of each Markdown file
-- given, from its "## " headings, between <!-- toc --> and <!-- /toc -->
-- (inserted before the first "## " heading when absent). With --check it
-- changes nothing and exits 1 when a file's table is missing or stale
-- (spec/docs_blocks_spec.lua runs it so).
local check = arg[1] == "--check"
local files = {}
for i = check and 2 or 1, #arg do files[#files + 1] = arg[i] end

-- GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
local function anchor(title, seen)
  local a = title:lower():gsub("[^%w%s%-_]", ""):gsub("%s", "-")
  local n = seen[a]
  seen[a] = (n or 0) + 1
  return n and (a .. "-" .. n) or a
end

local function toc(text)
  local items, seen, fence = {}, {}, false
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if line:match("^%s*```") then fence = not fence end
    local title = not fence and line:match("^## (.+)$")
    if title then
      items[#items + 1] = ("- [%s](#%s)"):format(title, anchor(title, seen))
    end
  end
  return "<!-- toc -->\n**Contents**\n\n" .. table.concat(items, "\n") .. "\n<!-- /toc -->"
end

local stale = 0
for _, path in ipairs(files) do
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local body = text:gsub("<!%-%- toc %-%->.-<!%-%- /toc %-%->\n\n", "")
  local new_toc = toc(body)
  local a = body:find("\n## ", 1, true)
  local out = a and (body:sub(1, a) .. new_toc .. "\n\n" .. body:sub(a + 1)) or body
  if not a then
    io.stderr:write(path, ": no \"## \" heading to make a table of contents from\n")
    stale = stale + 1
  elseif out ~= text then
    stale = stale + 1
    if check then
      io.stderr:write(path, ": table of contents missing or stale\n")
    else
      local w = assert(io.open(path, "wb"))
      w:write(out)
      w:close()
      print("updated " .. path)
    end
  end
end
if check and stale > 0 then os.exit(1) end
