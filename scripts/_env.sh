# Sourced by the scripts: makes .venv (once) and installs the project with the given extras.
# Python 3.11+ is required; PYTHON overrides which interpreter builds the virtualenv.
# CALLER_DIR is where the script was started from (scripts/run serves from there); the
# install itself runs in the repository root, ROOT.
set -euo pipefail
CALLER_DIR=$PWD
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ensure_venv() {
  # ensure_venv EXTRAS [SUPERSET...]: an install of a superset of EXTRAS will do too.
  local extras=$1
  shift
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # Reinstall only when setup.cfg (dependencies) changed or the extras differ. The marker is
  # written only after pip succeeded and the package imports from outside this folder (in
  # the repo root `import service` would find the working tree, installed or not), so a
  # failed install is retried by the next run instead of leaving a broken .venv behind.
  local digest stamp other
  digest=$(sha1sum setup.cfg pyproject.toml | sha1sum | cut -c1-12)
  stamp=".venv/.installed-$extras-$digest"
  for other in "$@"; do
    [ -f ".venv/.installed-$other-$digest" ] && return 0
  done
  if [ ! -f "$stamp" ]; then
    echo "== installing the project and its '$extras' extras into .venv (about a minute the first time)" >&2
    # pip's own lines show progress; only the noisy location warnings are dropped, and the
    # status kept is pip's, so a failed install stops here.
    local status
    set +e
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
      -e ".[$extras]" 2>&1 | { grep --line-buffered -v "^WARNING: Location" >&2; true; }
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
      echo "error: installing into .venv failed (pip exited with $status); see pip's message above. Nothing was marked installed: the next run tries again." >&2
      exit "$status"
    fi
    if ! (cd / && "$ROOT/.venv/bin/python" -c "import service.app") >&2; then
      echo "error: the install finished but 'service' does not import from .venv; the next run tries again." >&2
      exit 1
    fi
    rm -f .venv/.installed-"$extras"-*
    touch "$stamp"
    echo "== installed" >&2
  fi
}
