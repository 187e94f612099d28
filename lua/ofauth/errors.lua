--- The one error type of the ofauth library.
--
-- Every failure is a table with `kind` (reauth_required, rate_limited,
-- network, api, invalid), and where known `status`, `code` (the API's machine
-- code), `message`, `method`, `path`, `attempts`, `retry_after` and `body`
-- (the parsed answer). Errors carry no API key and no connection id in clear:
-- paths, messages and bodies are redacted when the error is made.
local redact = require("ofauth.redact")

local M = {}

M.kinds = {
  reauth_required = true, -- SESSION_EXPIRED: the user must reconnect through Link
  rate_limited = true, -- 429 / RATE_LIMIT_EXCEEDED after the policy gave up
  network = true, -- transport failure (timeout, reset, DNS, TLS) after retries
  api = true, -- any other non-2xx answer
  invalid = true, -- bad input or configuration, found before any request
}

local Error = {}
Error.__index = Error
M.Error = Error

function Error:__tostring()
  local parts = { "ofauth " .. tostring(self.kind) .. " error" }
  if self.method or self.path then
    parts[#parts + 1] = (" (%s %s)"):format(self.method or "?", self.path or "?")
  end
  if self.status then parts[#parts + 1] = " status " .. tostring(self.status) end
  if self.code then parts[#parts + 1] = " " .. tostring(self.code) end
  if self.message then parts[#parts + 1] = ": " .. tostring(self.message) end
  if self.attempts and self.attempts > 1 then
    parts[#parts + 1] = (" (after %d attempts)"):format(self.attempts)
  end
  return table.concat(parts)
end

--- Make an error. Text fields and the body are redacted here, once.
function M.new(kind, fields)
  assert(M.kinds[kind], "unknown error kind " .. tostring(kind))
  local e = { kind = kind }
  for k, v in pairs(fields or {}) do e[k] = v end
  e.path = redact.text(e.path)
  e.message = redact.text(e.message)
  e.code = redact.text(e.code)
  if e.body ~= nil then e.body = redact.value(e.body) end
  return setmetatable(e, Error)
end

function M.invalid(message) return M.new("invalid", { message = message }) end

function M.is(v) return getmetatable(v) == Error end

return M
