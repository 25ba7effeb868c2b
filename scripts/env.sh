# Sourced by the project's scripts: installs libtorch once (scripts/setup-env.sh) and
# exports what the build and the reference tests need.
_amlmil_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBTORCH="$(bash "$_amlmil_root/scripts/setup-env.sh" | tail -n 1)" || return 1
export LIBTORCH
export AMLMIL_PYTHON="$(dirname "$(dirname "$(dirname "$(dirname "$LIBTORCH")")")")/bin/python"
