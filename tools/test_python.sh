#!/usr/bin/env bash
# The suite on one more CPython, native then pure, in a venv of its own.
#
#   tools/test_python.sh 3.12 [pytest arguments...]
#
# The interpreter is pyenv's newest 3.12.x, else python3.12 on PATH (one
# that runs: pyenv's shims name versions that are not selected). A machine
# without it gets a line saying so, and exit 0: `make test-pythons`
# runs every version it finds and names the ones it skipped. The venv is
# .venv-3.12 (pip installs `.[test,docs]` there, with Django 6.0 on 3.12 and
# the newest Django after it, whose django.tasks the backend then uses). Its extension is built in place
# beside the others' (each Python's file has its own ABI tag).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
shift

python=
if command -v pyenv >/dev/null; then
  python=$(ls -d "$(pyenv root)/versions/$version".*/bin/"python$version" 2>/dev/null \
    | sort -V | tail -n 1 || true)
fi
if [ -z "$python" ] && "python$version" -c '' 2>/dev/null; then
  python=$(command -v "python$version")
fi
if [ -z "$python" ]; then
  echo "== Python $version: not on this machine (PATH or pyenv), skipped"
  exit 0
fi

venv=".venv-$version"
echo "== Python $version: $python, in $venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# 3.12 keeps Django 6.0, the first with django.tasks; later Pythons get the
# newest Django. (3.11, in ./.venv, has 5.2 with the django-tasks backport.)
case $version in
  3.12) django='django>=6.0,<6.1' ;;
  *) django='django>=6.0' ;;
esac
"$venv/bin/pip" install --quiet -e '.[test,docs]' "$django"
"$venv/bin/python" -c 'import sandboxq, sys; sys.exit(sandboxq.IMPLEMENTATION != "native")' \
  || { echo "Python $version: the native extension did not build"; exit 1; }

echo "== Python $version: native"
"$venv/bin/python" -m pytest -q "$@"
echo "== Python $version: pure-Python twin"
SANDBOXQ_NO_EXTENSIONS=1 "$venv/bin/python" -m pytest -q -m 'not slow and not integration' "$@"
