# Helpers for bench/*.sh (sourced).
# result NAME VALUE UNIT PEER PEER_VALUE TARGET_OP TARGET
#   ratio = VALUE / PEER_VALUE; pass = ratio TARGET_OP TARGET ("ge" or "le")
result() {
  local name=$1 value=$2 unit=$3 peer=$4 peer_value=$5 op=${6:-} target=${7:-}
  "$OFLUA_BIN" - "$name" "$value" "$unit" "$peer" "$peer_value" "$op" "$target" <<'LUA'
    local cjson = require("cjson")
    local name, value, unit, peer, pv, op, target = ...
    value, pv, target = tonumber(value), tonumber(pv), tonumber(target)
    local r = { name = name, value = value, unit = unit }
    if peer ~= "" then r.peer = peer; r.peer_value = pv end
    if pv and pv ~= 0 and value then r.ratio = value / pv end
    if op ~= "" and target and r.ratio then
      r.target = (op == "ge" and "ratio >= " or "ratio <= ") .. target
      if op == "ge" then r.pass = r.ratio >= target else r.pass = r.ratio <= target end
    end
    print("RESULT " .. cjson.encode(r))
LUA
}
