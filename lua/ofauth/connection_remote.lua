--- Disconnecting a connection at OFAuth (DELETE /v2/account/connections/{id})
-- and forgetting it locally, on top of the connections repository.
local errors = require("ofauth.errors")
local log = require("ofauth.log")

local M = {}

--- Disconnect a user's connection at OFAuth, then wipe the local record.
-- A connection OFAuth no longer knows (404) is wiped too.
function M.disconnect(self, client, user_id)
  local rec = self:get(user_id)
  if not rec or not rec.connection_id then return nil, errors.invalid("no connection stored for this user") end
  local ok, err = client:disconnect(rec.connection_id)
  if not ok and not (err and err.status == 404) then return nil, err end
  self:forget(user_id)
  log.info("connection.disconnected", { user_id = user_id })
  return true
end

return M
