#!/usr/bin/env bash
# The two commands of the README:
#   ./dev.sh demo   set up (once), then the whole round trip headless: the sample clip opened
#                   in Blender (bpy), markers tracked through `pipstrack serve` -> pipstrack-demo/
#   ./dev.sh test   set up (once), lint (ruff: pyproject.toml's rules, line length 120, and its
#                   formatting) and run the whole test suite
# Needs only Python 3.11 and the package index. The virtual environment goes to .venv
# (or $PIPSTRACK_VENV).
set -euo pipefail
cd "$(dirname "$0")"
venv="${PIPSTRACK_VENV:-.venv}"
task="${1:-}"
case "$task" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

if [ ! -x "$venv/bin/python" ]; then
  py="$(command -v python3.11 || command -v python3)"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned. From the package index that is a multi-GB CUDA build on Linux (CPU and
# Apple-GPU builds on macOS, CPU on Windows); a CPU-only Linux machine should take PyTorch's CPU
# wheels: PIPSTRACK_TORCH_INDEX=https://download.pytorch.org/whl/cpu ./dev.sh test
torch_index=()
if [ -n "${PIPSTRACK_TORCH_INDEX:-}" ]; then torch_index=(--index-url "$PIPSTRACK_TORCH_INDEX"); fi
"${pip[@]}" ${torch_index[@]+"${torch_index[@]}"} "torch==2.13.0"  # (safe with bash 3.2 and set -u)
if [ "$task" = test ]; then
  "${pip[@]}" -e ".[test]"
  shift
  "$venv/bin/ruff" check --quiet .
  "$venv/bin/ruff" format --check --quiet .
  exec "$venv/bin/python" -m pytest "$@"
else
  "${pip[@]}" -e ".[blender]"
  shift
  exec "$venv/bin/python" tools/demo.py "$@"
fi
