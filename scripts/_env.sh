# Sourced by the scripts: makes .venv (once) and installs the project with the given extras.
# Python 3.11+ is required; PYTHON overrides which interpreter builds the virtualenv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ensure_venv() {
  local extras=$1
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # Reinstall only when setup.cfg (dependencies) changed or the extras differ.
  local stamp=".venv/.installed-$extras-$(sha1sum setup.cfg pyproject.toml | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "installing the project and its '$extras' extras into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]" 2>&1 \
      | grep -v "^WARNING: Location" >&2 || true
    .venv/bin/python -c "import service" # fail here, clearly, if the install did not work
    rm -f .venv/.installed-"$extras"-*
    touch "$stamp"
  fi
}
