--- The input formats of the fuzz targets (spec/fuzz/seeds.lua writes them).
--
-- A request is "name: value\n" lines, an empty line, then the body bytes;
-- names are lower-cased and a repeated name is joined with ", " (as
-- oflua.server does). The app target's input starts with a method line.
local M = {}

function M.split(data)
  local sep = data:find("\n\n", 1, true)
  if not sep then return data, "" end
  return data:sub(1, sep), data:sub(sep + 2)
end

function M.headers(block)
  local h = {}
  for line in block:gmatch("[^\n]+") do
    local k, v = line:match("^([^:]*):%s?(.*)$")
    if k then
      k = k:lower()
      h[k] = h[k] and (h[k] .. ", " .. v) or v
    end
  end
  return h
end

--- data -> headers, body
function M.request(data)
  local block, body = M.split(data)
  return M.headers(block), body
end

--- data -> method, headers, body (first line: the method)
function M.app_request(data)
  local nl = data:find("\n", 1, true)
  if not nl then return data, {}, "" end
  local h, body = M.request(data:sub(nl + 1))
  return data:sub(1, nl - 1), h, body
end

return M
