-- examples/monitoring/dashboard.json: a Grafana dashboard whose every query
-- names only metric families (and label names) that ofauth.metrics exports,
-- and that promtool parses (each query checked as a recording rule).
local h = require("spec.helper")
local cjson = require("cjson")
local metrics = require("ofauth.metrics")

local dash = cjson.decode(h.slurp(h.source_dir .. "/examples/monitoring/dashboard.json"))

local function exprs()
  local list = {}
  for _, p in ipairs(dash.panels) do
    for _, t in ipairs(p.targets) do list[#list + 1] = { panel = p.title, expr = t.expr } end
  end
  return list
end

describe("examples/monitoring/dashboard.json", function()
  it("is a Grafana dashboard with a Prometheus datasource variable and 8 panels", function()
    assert.is_string(dash.title)
    assert.equal("datasource", dash.templating.list[1].type)
    assert.equal(8, #dash.panels)
    for _, p in ipairs(dash.panels) do
      assert.equal("${datasource}", p.datasource.uid)
      assert.is_true(#p.targets >= 1, p.title)
    end
  end)

  it("queries only metrics ofauth.metrics exports", function()
    for _, e in ipairs(exprs()) do
      for name in e.expr:gmatch("ofauth_[%w_]+") do
        local base = name:match("^(.-)_bucket$") or name
        assert.is_truthy(metrics.help[base], e.panel .. ": unknown metric " .. name)
      end
    end
  end)

  it("has queries promtool accepts", function()
    if select(3, h.sh("command -v promtool")) ~= 0 then
      pending("promtool not found: install Debian's `prometheus` package (scripts/bootstrap does)")
      return
    end
    local lines = { "groups:", "  - name: dashboard", "    rules:" }
    for i, e in ipairs(exprs()) do
      lines[#lines + 1] = ("      - record: dashboard:query_%d"):format(i)
      lines[#lines + 1] = "        expr: '" .. e.expr:gsub("'", "''") .. "'"
    end
    local dir = h.tmpdir()
    h.write_file(dir .. "/rules.yml", table.concat(lines, "\n") .. "\n")
    local out, err, code = h.sh("promtool check rules " .. h.shq(dir .. "/rules.yml"))
    h.sh("rm -rf " .. h.shq(dir))
    assert.equal(0, code, out .. err)
  end)
end)
