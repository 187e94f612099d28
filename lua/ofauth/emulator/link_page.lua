--- The hosted Link page of the emulator: a small HTML form a person can use
-- in a browser. It posts (form-encoded) back to the same URL with
-- `outcome=success|cancelled|error`, `step` and `error_code`; the emulator
-- then answers 303 to the application's redirectUrl.
local M = {}

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
function M.escape(s)
  return (tostring(s):gsub("[&<>\"']", ESC))
end

local PAGE = [[<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OFAuth emulator: %s</title>
<style>
body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}
.box{border:1px solid #ccc;border-radius:8px;padding:1.5rem}
button{font-size:1rem;padding:.5rem 1rem;margin:.25rem .25rem .25rem 0;cursor:pointer}
.note{color:#666;font-size:.9rem} label{display:block;margin:.5rem 0 .2rem}
</style></head>
<body><div class="box">
<h1>%s</h1>
<p>This is the <strong>local OFAuth emulator</strong>: no real account is used.
The application asks for: %s.</p>
%s
</div></body></html>
]]

local FORM = [[<form method="post" action="%s">
<button name="outcome" value="success" type="submit">Approve</button>
<button name="outcome" value="cancelled" type="submit">Cancel</button>
<button name="outcome" value="error" type="submit">Fail with an error</button>
<label for="step">Step (for cancel / error)</label>
<select id="step" name="step"><option>login</option><option>2fa</option><option>permissions</option></select>
<label for="error_code">Error code (for error)</label>
<input id="error_code" name="error_code" value="LOGIN_FAILED">
</form>
<p class="note">Session expires at %s.</p>]]

--- Page for a pending session. `action` is the form's target path.
function M.render(session, action, permissions, expires_iso)
  local title = session.connectionId and "Reconnect your account" or "Connect your account"
  local perms = #permissions > 0 and table.concat(permissions, ", ") or "no permissions"
  local body = FORM:format(M.escape(action), M.escape(expires_iso))
  return PAGE:format(M.escape(title), M.escape(title), M.escape(perms), body)
end

--- Page for a session that can no longer be used.
function M.closed(status)
  local msg = ("<p>This Link session is %s.</p>"):format(M.escape(status))
  return PAGE:format("Link session closed", "Link session closed", "nothing", msg)
end

--- Decode an application/x-www-form-urlencoded body (last value wins).
function M.parse_form(body)
  local out = {}
  for pair in (body or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function dec(s)
      s = s:gsub("+", " ")
      return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
    end
    out[dec(k)] = dec(v)
  end
  return out
end

return M
