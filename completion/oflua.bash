# bash completion for oflua. The words come from the binary itself
# (`oflua help --complete [CMD [SUB]]`), i.e. from the same command
# descriptions as --help, so they cannot drift from the CLI.
_oflua() {
  local cur=${COMP_WORDS[COMP_CWORD]} words
  if [ "$COMP_CWORD" -eq 1 ]; then
    words=$("${COMP_WORDS[0]}" help --complete 2>/dev/null)
  elif [ "$COMP_CWORD" -eq 2 ]; then
    words=$("${COMP_WORDS[0]}" help --complete "${COMP_WORDS[1]}" 2>/dev/null)
  else
    words=$("${COMP_WORDS[0]}" help --complete "${COMP_WORDS[1]}" "${COMP_WORDS[2]}" 2>/dev/null)
  fi
  case "$cur" in
    -*) ;;
    *) if [ "$COMP_CWORD" -gt 2 ] || { [ "$COMP_CWORD" -eq 2 ] && ! printf '%s\n' "$words" | grep -qv '^--'; }; then
         mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return; fi ;;
  esac
  mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
}
complete -o default -F _oflua oflua
