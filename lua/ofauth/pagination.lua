--- The pagination styles of the OFAuth API (ofauth-endpoints.md, 1.8).
--
-- A style is two pure functions over the request parameters (one flat table
-- of wire names) and one decoded page:
--   items(page, field)            the page's items (a bare JSON array is its
--                                 own item list, whatever the style says)
--   next(params, page, items)     the parameters of the next page, or nil
--                                 when this page was the last
-- Styles:
--   offset       limit/offset; next offset = offset + #items while hasMore
--   next_offset  the same, preferring the answer's nextOffset when present
--   marker       `marker` <- nextMarker while hasMore (earnings, buyers)
--   time         `beforePublishTime` <- tailMarker while hasMore (posts)
--   id_cursor    `last_id` <- id of the last item while hasMore (chat messages)
--   cursor       `cursor` <- nextCursor while present (Vault+ list)
--   array        a bare array; next offset = offset + #items while the page
--                was full (no hasMore in the answer)
-- Every style also stops on an empty page and on a cursor that does not
-- move, so a misbehaving server cannot make a loop run forever.
local json = require("ofauth.json")

local M = {}

local function present(v) return v ~= nil and v ~= json.null and v ~= "" end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function is_array(page)
  return type(page) == "table" and (page[1] ~= nil or next(page) == nil)
end

--- The items of a page: page[field], or the page itself when it is a bare
-- array. nil when the page has neither.
function M.items(page, field)
  if is_array(page) then return page end
  if type(page) ~= "table" then return nil end
  local list = page[field or "list"]
  if type(list) == "table" then return list end
  return nil
end

local function offset_next(params, page, items, use_next_offset)
  if #items == 0 then return nil end
  local cur = math.tointeger(params.offset) or 0
  if is_array(page) then
    -- no hasMore: a page shorter than the limit is the last
    if params.limit and #items < params.limit then return nil end
  elseif page.hasMore ~= true then
    return nil
  end
  local nxt = cur + #items
  if use_next_offset and not is_array(page) and math.tointeger(page.nextOffset) then
    nxt = math.tointeger(page.nextOffset)
  end
  if nxt <= cur then return nil end
  local p = copy(params)
  p.offset = nxt
  return p
end

local function cursor_next(field, value, params)
  if not present(value) or value == params[field] then return nil end
  local p = copy(params)
  p[field] = value
  return p
end

M.styles = {
  offset = { next = function(params, page, items) return offset_next(params, page, items, true) end },
  next_offset = { next = function(params, page, items) return offset_next(params, page, items, true) end },
  array = { next = function(params, page, items) return offset_next(params, page, items, false) end },
  marker = {
    next = function(params, page, items)
      if #items == 0 or is_array(page) or page.hasMore ~= true then return nil end
      return cursor_next("marker", page.nextMarker, params)
    end,
  },
  time = {
    next = function(params, page, items)
      if #items == 0 or is_array(page) or page.hasMore ~= true then return nil end
      return cursor_next("beforePublishTime", page.tailMarker, params)
    end,
  },
  id_cursor = {
    next = function(params, page, items)
      if #items == 0 or is_array(page) or page.hasMore ~= true then return nil end
      local last = items[#items]
      if type(last) ~= "table" then return nil end
      local p = cursor_next("last_id", last.id, params)
      if p then p.offset = nil end
      return p
    end,
  },
  cursor = {
    next = function(params, page, items)
      if #items == 0 or is_array(page) then return nil end
      return cursor_next("cursor", page.nextCursor, params)
    end,
  },
}

--- The style called `name`, or nil.
function M.style(name) return M.styles[name] end

return M
