# shellcheck shell=bash
# Shared venv set-up for scripts/test.sh, demo.sh and check_dist.sh (through scripts/_common.sh).
# Source it; do not run it. Written for bash 3.2 (macOS's /bin/bash) and newer: see _common.sh.
#
# Needs nothing but python3 (3.10-3.13) with pip and venv. Creates, or reuses when it already
# matches, one venv per Airflow version in the repo root:
#   .venv                  the default, newest supported Airflow (WA019_DEFAULT_AIRFLOW_VERSION)
#   .venv-af-<version>     any other version, e.g. the lowest supported one in CI
# and installs into it: uv (with pip), this package in editable mode with its [test] extra, and
# apache-airflow==<version>. A stamp file records what was installed; when the stamp matches
# (same pyproject.toml, Airflow version, Python and this script), nothing is installed again;
# otherwise the venv is rebuilt from scratch (about 10 s with uv's cache warm), so it always holds
# what a fresh machine would get.
#
# Inputs (optional): AIRFLOW_VERSION, PYTHON (interpreter that builds the venv, default python3).
# Outputs: REPO_ROOT, AIRFLOW_VERSION, VENV_DIR, VENV_PY; the venv's bin/ is put first on PATH.

WA019_DEFAULT_AIRFLOW_VERSION="3.3.2"

# Airflow releases do not cap their dependencies: each release's known-good set is a constraints
# file on GitHub, which this project's machines cannot reach. An older Airflow installed with
# today's dependencies breaks (Airflow 3.0.6 with cadwyn 9 / fastapi 0.165: every task fails with
# "Remote server returned validation error"). So for an older release, resolve as of shortly after
# its release (uv --exclude-newer DATE), except for the packages this project needs current:
# common-compat (airflow.providers.common.compat.sdk is newer than 3.0.6's own set) and the test
# tools (the same ruff and pytest as in the default venv). Add a line RELEASE=YYYY-MM-DD per
# release you test; WA019_EXCLUDE_NEWER=YYYY-MM-DD overrides it. The one copy of this rule: the
# project venvs (below) and check_dist.sh's clean venv both take wa019_resolve_opts' options.
# 3.1.0 is the lowest supported release (pyproject.toml), tested in CI by .ci/run. (3.0.6, cut-off
# 2025-09-10, is below it: its `airflow dags test` prints connection passwords in debug lines.)
# (A list of pairs, not an associative array: bash 3.2 has none.)
WA019_AIRFLOW_CUTOFFS=(
    3.1.0=2025-09-30
)
WA019_CUTOFF_EXEMPT=(apache-airflow-providers-common-compat pytest ruff)

# wa019_valid_airflow_version VERSION: succeeds for a release number such as 3.0.6 or 3.1.0rc1.
wa019_valid_airflow_version() {
    # The regex in a variable, unquoted after =~: the one spelling every bash from 3.2 on reads alike.
    local re='^[0-9]+(\.[0-9]+)*([a-z]+[0-9]*)?$'
    [[ "$1" =~ $re ]]
}

# wa019_resolve_opts VERSION: sets WA019_CUTOFF to the dependency cut-off date for that Airflow
# release ("" when none: newest dependencies) and WA019_RESOLVE_OPTS to the matching options of
# `uv pip install` (empty when none; expand it as ${WA019_RESOLVE_OPTS[@]+"${WA019_RESOLVE_OPTS[@]}"}).
wa019_resolve_opts() {
    local version="$1" pair pkg
    WA019_CUTOFF="${WA019_EXCLUDE_NEWER:-}"
    if [[ -z "$WA019_CUTOFF" ]]; then
        for pair in ${WA019_AIRFLOW_CUTOFFS[@]+"${WA019_AIRFLOW_CUTOFFS[@]}"}; do
            if [[ "${pair%%=*}" == "$version" ]]; then
                WA019_CUTOFF="${pair#*=}"
            fi
        done
    fi
    WA019_RESOLVE_OPTS=()
    if [[ -n "$WA019_CUTOFF" ]]; then
        WA019_RESOLVE_OPTS+=(--exclude-newer "$WA019_CUTOFF")
        for pkg in ${WA019_CUTOFF_EXEMPT[@]+"${WA019_CUTOFF_EXEMPT[@]}"}; do
            WA019_RESOLVE_OPTS+=(--exclude-newer-package "$pkg=2999-12-31")
        done
    fi
}

# This file, found while it is being sourced (BASH_SOURCE[0] is then this file in every bash).
WA019_VENV_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

wa019_setup_venv() {
    REPO_ROOT="$(cd "$(dirname "$WA019_VENV_SH")/.." && pwd)"
    AIRFLOW_VERSION="${AIRFLOW_VERSION:-$WA019_DEFAULT_AIRFLOW_VERSION}"
    if ! wa019_valid_airflow_version "$AIRFLOW_VERSION"; then
        echo "error: bad Airflow version '$AIRFLOW_VERSION' (expected e.g. 3.0.6)" >&2
        return 1
    fi
    if [[ "$AIRFLOW_VERSION" == "$WA019_DEFAULT_AIRFLOW_VERSION" ]]; then
        VENV_DIR="$REPO_ROOT/.venv"
    else
        VENV_DIR="$REPO_ROOT/.venv-af-$AIRFLOW_VERSION"
    fi
    VENV_PY="$VENV_DIR/bin/python"
    local base_py="${PYTHON:-python3}"

    if ! command -v "$base_py" >/dev/null 2>&1; then
        echo "error: '$base_py' not found; install Python 3.10-3.13 (or set PYTHON=...)" >&2
        return 1
    fi
    local py_ver
    py_ver="$("$base_py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" || return 1
    if ! "$base_py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))'; then
        echo "error: $base_py is Python $py_ver; this project needs 3.10-3.13" >&2
        return 1
    fi

    local stamp_file="$VENV_DIR/.wa019-install-stamp"
    local stamp
    stamp="airflow=$AIRFLOW_VERSION python=$py_ver cutoff=${WA019_EXCLUDE_NEWER:-} $(cat "$REPO_ROOT/pyproject.toml" "$WA019_VENV_SH" \
        | "$base_py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"

    # Serialise concurrent set-ups of the same venv (test.sh and demo.sh started together).
    # The lock lives outside the repo so that it never shows up in git status. On fd 9, not
    # `exec {var}>`, which bash 3.2 lacks; macOS has no flock(1): there the set-ups are not
    # serialised.
    local lock_file locked=0
    lock_file="${TMPDIR:-/tmp}/wa019-venv-$(printf '%s' "$VENV_DIR" | cksum | cut -d' ' -f1).lock"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$lock_file"
        flock 9
        locked=1
    fi

    local rc=0
    if [[ -x "$VENV_PY" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
        && "$VENV_PY" -c 'import airflow_provider_wa019' >/dev/null 2>&1; then
        : # up to date
    else
        _wa019_install "$base_py" "$py_ver" "$stamp_file" "$stamp" || rc=$?
    fi

    if ((locked)); then
        exec 9>&-
    fi
    [[ $rc -eq 0 ]] || return "$rc"

    export VIRTUAL_ENV="$VENV_DIR"
    export PATH="$VENV_DIR/bin:$PATH"
    unset PYTHONHOME
}

_wa019_install() {
    local base_py="$1" py_ver="$2" stamp_file="$3" stamp="$4"
    local log
    # The X's last: BSD mktemp (macOS) replaces only trailing X's.
    log="$(mktemp "${TMPDIR:-/tmp}/wa019-venv.XXXXXX")"

    # Rebuilt from scratch: installing into an existing venv keeps packages that a fresh resolution
    # would not pick (uv keeps what is installed if it satisfies the requirements).
    rm -rf "$VENV_DIR"

    wa019_resolve_opts "$AIRFLOW_VERSION"
    local cutoff="$WA019_CUTOFF"
    if [[ -z "$cutoff" && "$AIRFLOW_VERSION" != "$WA019_DEFAULT_AIRFLOW_VERSION" ]]; then
        echo "venv: WARNING: no dependency cut-off date known for Airflow $AIRFLOW_VERSION; installing" \
            "today's dependencies, which may not work with it (set WA019_EXCLUDE_NEWER=YYYY-MM-DD)" >&2
    fi

    echo "venv: installing Airflow $AIRFLOW_VERSION into ${VENV_DIR#"$REPO_ROOT"/}${cutoff:+ (dependencies as of $cutoff)} (log: $log)" >&2
    local start=$SECONDS
    if ! {
        "$base_py" -m venv "$VENV_DIR" \
            && "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input uv \
            && (cd "$REPO_ROOT" && "$VENV_DIR/bin/uv" pip install --python "$VENV_PY" \
                ${WA019_RESOLVE_OPTS[@]+"${WA019_RESOLVE_OPTS[@]}"} -e ".[test]" "apache-airflow==$AIRFLOW_VERSION")
    } >"$log" 2>&1; then
        echo "error: venv set-up failed; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        return 1
    fi
    # Prove the result imports before stamping it.
    if ! "$VENV_PY" -c 'import airflow_provider_wa019' >>"$log" 2>&1; then
        echo "error: installed venv cannot import airflow_provider_wa019; see $log" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    local got
    got="$("$VENV_PY" -c 'from importlib.metadata import version; print(version("apache-airflow"))')"
    if [[ "$got" != "$AIRFLOW_VERSION" ]]; then
        echo "error: asked for apache-airflow==$AIRFLOW_VERSION but the venv has $got" >&2
        return 1
    fi
    printf '%s\n' "$stamp" >"$stamp_file"
    rm -f "$log"
    echo "venv: ready in $((SECONDS - start)) s (Airflow $got, Python $py_ver)" >&2
}
