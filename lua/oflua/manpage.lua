--- oflua(1) in roff, rendered from the same command descriptions as
-- `oflua help` and `oflua CMD [SUB] --help` (oflua.cliutil): built with
-- `oflua help --man > oflua.1` (CMake does it) so the two cannot drift.
local M = {}

local function esc(s)
  s = tostring(s):gsub("\\", "\\e"):gsub("%-", "\\-")
  -- a line starting with . or ' would be a roff request
  return (s:gsub("\n([.'])", "\n\\&%1"):gsub("^([.'])", "\\&%1"))
end

local function verbatim(text)
  return ".nf\n" .. esc(text:gsub("\n+$", "")) .. "\n.fi\n"
end

--- commands: list of {name, summary, cmd}; global: the `oflua help` text.
function M.render(commands, global)
  local core = require("oflua.core")
  local b = {}
  b[#b + 1] = ('.TH OFLUA 1 "" "oflua %s" "User Commands"\n'):format(core.version)
  b[#b + 1] = ".SH NAME\noflua \\- Lua 5.4 with native HTTP, crypto and storage, and the ofauth library\n"
  b[#b + 1] = ".SH SYNOPSIS\n.B oflua\n[\\fIoptions\\fR] [\\fIscript\\fR [\\fIargs\\fR]]\n.br\n"
    .. ".B oflua\n\\fIcommand\\fR [\\fIsubcommand\\fR] [\\fIoptions\\fR]\n"
  b[#b + 1] = ".SH DESCRIPTION\n" .. verbatim(global)
  b[#b + 1] = ".SH COMMANDS\n"
  for _, c in ipairs(commands) do
    if c.cmd then
      b[#b + 1] = ".SS oflua " .. esc(c.name) .. "\n" .. verbatim(c.cmd:usage())
      for _, s in ipairs(c.cmd.def.subcommands or {}) do
        b[#b + 1] = ".SS oflua " .. esc(c.name .. " " .. s.name) .. "\n" .. verbatim(c.cmd:usage(s.name))
      end
    end
  end
  b[#b + 1] = ".SH EXIT STATUS\n0 on success; 1 when a command fails (one line on stderr, or a JSON "
    .. "object on stdout with \\-\\-json); 2 for a usage error (unknown command or flag, missing "
    .. "or extra argument, number out of range), before any request is made.\n"
  b[#b + 1] = ".SH FILES\n.I <prefix>/share/lua/5.4/ofauth, <prefix>/share/lua/5.4/oflua\n"
    .. "the Lua library and the commands;\n.br\n.I <prefix>/lib/lua/5.4/oflua/*.so\nthe native modules.\n"
  b[#b + 1] = ".SH SEE ALSO\n.BR lua5.4 (1),\nthe documentation in /usr/share/doc/oflua and docs/ of the source tree.\n"
  return table.concat(b)
end

return M
