--- Webhook signers for the emulator: function(body, msg_id, t) -> headers.
--
-- The signing itself belongs to `ofauth.webhooks` (sign = the checklist's
-- `t=<t>,v1=<hex>` value, sign_svix = the Svix headers), so the emulator
-- signs exactly what the library verifies. When that module is not
-- installed, the same schemes are composed from `oflua.crypto` (HMAC-SHA256,
-- base64, hex): see ofauth-api.md, Webhooks.
local M = {}

local function crypto_svix(crypto)
  return function(body, secret, id, t)
    local key = assert(crypto.unbase64(secret:match("^whsec_(.*)$") or ""), "bad whsec_ secret")
    local mac = crypto.hmac("sha256", key, ("%s.%d.%s"):format(id, t, body))
    return {
      ["svix-id"] = id,
      ["svix-timestamp"] = tostring(t),
      ["svix-signature"] = "v1," .. crypto.base64(mac),
    }
  end
end

local function crypto_checklist(crypto)
  return function(body, secret, t)
    local mac = crypto.hmac("sha256", secret, ("%d.%s"):format(t, body))
    return ("t=%d,v1=%s"):format(t, crypto.hex(mac))
  end
end

--- Where the schemes come from: ofauth.webhooks when present, else oflua.crypto.
function M.schemes()
  local ok, wh = pcall(require, "ofauth.webhooks")
  if ok and type(wh) == "table" and wh.sign and wh.sign_svix then
    return { sign = wh.sign, sign_svix = wh.sign_svix, source = "ofauth.webhooks" }
  end
  local crypto = require("oflua.crypto")
  if not crypto.hmac then return nil, "oflua.crypto has no hmac" end
  return { sign = crypto_checklist(crypto), sign_svix = crypto_svix(crypto), source = "oflua.crypto" }
end

--- The signer for a configuration ({signing, webhook_secret, signature_header}).
-- `schemes` defaults to M.schemes().
function M.new(cfg, schemes)
  if not schemes then
    local err
    schemes, err = M.schemes()
    if not schemes then return nil, err end
  end
  local secret = cfg.webhook_secret
  if cfg.signing == "checklist" then
    local header = cfg.signature_header
    return function(body, _, t)
      return { [header] = schemes.sign(body, secret, t) }
    end
  end
  return function(body, id, t)
    local h = schemes.sign_svix(body, secret, id, t)
    local out = {}
    for k, v in pairs(h) do out[k:lower()] = v end
    return out
  end
end

return M
