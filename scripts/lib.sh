# Shell functions shared by scripts/setup and scripts/install-service (sourced, not run).

# find_python: print the path of a Python >= 3.12 (mitmproxy 12 needs it): $HUBCACHE_PYTHON,
# python3.13/python3.12/python3 on PATH, or pyenv's 3.12+ (installed but not selected). Fails if none.
find_python() {
  local c v
  for c in "${HUBCACHE_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  # pyenv installs 3.12/3.13 without putting them on PATH unless selected
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.|$)' | sort -rV); do
      c=$(PYENV_VERSION="$v" pyenv which python3 2>/dev/null) || continue
      "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo "$c"; return 0; }
    done
  fi
  return 1
}
