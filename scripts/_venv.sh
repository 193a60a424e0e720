# Sourced by scripts/test and scripts/demo: make or reuse .venv with Python 3.11+ and install
# the project into it (with the extras given in $EXTRAS). Needs only a Python 3.11+ on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
find_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    echo "convert-agent needs Python 3.11 or newer on PATH (or set PYTHON=/path/to/python3.11)" >&2
    return 1
}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    rm -rf .venv
    "$(find_python)" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.installed-${EXTRAS:-none}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log=$(mktemp)
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check \
        -e ".${EXTRAS:+[$EXTRAS]}" >"$log" 2>&1; then
        cat "$log" >&2
        echo "installing convert-agent into .venv failed (see above)" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
