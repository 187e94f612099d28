--- Media uploads to the vault: init -> one PUT, or numbered part PUTs ->
-- complete (ofauth-endpoints.md 1.6).
--
--   local res, err = acc:upload{path = "clip.mp4", content_type = "video/mp4",
--     on_progress = function(p) print(p.sent, p.total) end}
--   -- res = {mediaUploadId, media = {id, type, ...}} as the API sends it
--
-- opts:
--   path | data       the file to send, or its bytes (exactly one)
--   filename          default: the path's base name ("upload.bin" for data)
--   content_type      MIME type (required: the API needs contentType)
--   vault_upload      the init's vaultUpload object ({mode = "message", userId})
--   on_progress       fn{sent, total, part, parts, media_upload_id}, after
--                     each PUT (errors in it are raised to the caller)
--   part_attempts     tries per part on top of the policy's retries (3)
--   max_size          refuse bigger files before sending anything (4 GiB)
--   timeout_ms, deadline   as for request, per PUT
-- The part count and size come from the init answer's headers
-- (x-ofauth-upload-total-parts, x-ofauth-upload-part-size), defaulting to
-- one part of the whole file, as the SDK helpers do. Parts go one at a time;
-- a failed part is sent again alone (the policy retries it first, then this
-- loop up to part_attempts), never the parts before it. A file is read one
-- part at a time, so memory stays at one part.
local errors = require("ofauth.errors")

local M = {}

M.defaults = {
  part_attempts = 3,
  max_size = 4 * 1024 * 1024 * 1024,
  max_parts = 10000,
}

local function basename(p) return (p:match("([^/\\]+)$")) or p end

-- A source of bytes: {size, read(offset, len) -> string | nil, err, close()}.
local function source(opts)
  if opts.data ~= nil then
    local data = opts.data
    return { size = #data, read = function(off, len) return data:sub(off + 1, off + len) end,
      close = function() end }
  end
  local f, err = io.open(opts.path, "rb")
  if not f then return nil, errors.invalid("upload: cannot open the file: " .. tostring(err)) end
  local size = f:seek("end")
  return {
    size = size,
    read = function(off, len)
      local ok, serr = f:seek("set", off)
      if not ok then return nil, serr end
      local s = f:read(len)
      if s == nil or #s ~= len then return nil, "short read" end
      return s
    end,
    close = function() f:close() end,
  }
end

local function header_int(headers, name)
  local v = headers and headers[name]
  local n = v and math.tointeger(tonumber(v))
  if n and n >= 1 then return n end
  return nil
end

local function put(acc, path, bytes, opts, content_type)
  return acc.client:request("PUT", path, {
    body = bytes, connection_id = acc.connection_id,
    headers = { ["content-type"] = content_type },
    timeout_ms = opts.timeout_ms, deadline = opts.deadline,
    idempotent = true, endpoint = path:find("/parts/") and "access.uploads.replaceParts"
      or "access.uploads.replace",
  })
end

--- Run an upload on behalf of `acc` (an ofauth.client Access object).
-- Raises for wrong argument types; returns the final answer {mediaUploadId,
-- media?} or nil, err (kind "invalid" for bad input, found before sending).
function M.run(acc, opts)
  if type(opts) ~= "table" then error("upload: options table required", 3) end
  if (opts.path == nil) == (opts.data == nil) then
    error("upload: give exactly one of path and data", 3)
  end
  if opts.path ~= nil and type(opts.path) ~= "string" then error("upload: path must be a string", 3) end
  if opts.data ~= nil and type(opts.data) ~= "string" then error("upload: data must be a string", 3) end
  if type(opts.content_type) ~= "string" or not opts.content_type:match("^[%w!#$&^_.+-]+/[%w!#$&^_.+-]+$") then
    return nil, errors.invalid("upload: content_type must be a MIME type such as video/mp4")
  end
  local src, serr = source(opts)
  if not src then return nil, serr end
  local ok, res, err = pcall(function()
    local size = src.size
    if size < 1 then return nil, errors.invalid("upload: the file is empty") end
    if size > (opts.max_size or M.defaults.max_size) then
      return nil, errors.invalid(("upload: the file is larger than max_size (%d bytes)"):format(
        opts.max_size or M.defaults.max_size))
    end
    local filename = opts.filename or (opts.path and basename(opts.path)) or "upload.bin"
    local init, meta = acc:call("access.uploads.init", { filename = filename, size = size,
      contentType = opts.content_type, vaultUpload = opts.vault_upload },
      { timeout_ms = opts.timeout_ms, deadline = opts.deadline })
    if not init then return nil, meta end
    local id = type(init) == "table" and init.mediaUploadId
    if type(id) ~= "string" and math.type(id) ~= "integer" then
      return nil, errors.new("api", { message = "upload init answered no mediaUploadId",
        method = "POST", path = "/v2/access/uploads/init" })
    end
    id = tostring(id)
    local parts = header_int(meta.headers, "x-ofauth-upload-total-parts") or 1
    local part_size = header_int(meta.headers, "x-ofauth-upload-part-size") or size
    if parts > 1 and (parts > M.defaults.max_parts or (parts - 1) * part_size >= size
      or parts * part_size < size) then
      return nil, errors.new("api", { message = ("upload init answered %d parts of %d bytes for %d bytes")
        :format(parts, part_size, size), method = "POST", path = "/v2/access/uploads/init" })
    end
    local base = "/v2/access/uploads/" .. require("ofauth.client").urlencode(id)
    local progress = opts.on_progress
    if parts == 1 then
      local bytes, rerr = src.read(0, size)
      if not bytes then return nil, errors.invalid("upload: cannot read the file: " .. tostring(rerr)) end
      local done, derr = put(acc, base, bytes, opts, opts.content_type)
      if not done then return nil, derr end
      if progress then progress({ sent = size, total = size, part = 1, parts = 1, media_upload_id = id }) end
      return done
    end
    local sent = 0
    local attempts = opts.part_attempts or M.defaults.part_attempts
    for n = 1, parts do
      local off = (n - 1) * part_size
      local len = math.min(part_size, size - off)
      local bytes, rerr = src.read(off, len)
      if not bytes then return nil, errors.invalid("upload: cannot read the file: " .. tostring(rerr)) end
      local answer, perr
      for _ = 1, attempts do
        answer, perr = put(acc, base .. "/parts/" .. n, bytes, opts, opts.content_type)
        if answer or perr.kind == "invalid" or perr.kind == "reauth_required" then break end
        -- a 4xx is the server's final word on this part; anything else: again
        if perr.kind == "api" and perr.status and perr.status < 500 then break end
      end
      if not answer then return nil, perr end
      sent = sent + len
      if progress then
        progress({ sent = sent, total = size, part = n, parts = parts, media_upload_id = id })
      end
    end
    return acc:call("access.uploads.complete", { mediaUploadId = id },
      { timeout_ms = opts.timeout_ms, deadline = opts.deadline })
  end)
  src.close()
  if not ok then error(res, 0) end
  return res, err
end

return M
