#!/usr/bin/env bash
# The project's test command (README: `bash scripts/test.sh`).
#
#   bash scripts/test.sh [--airflow-version X.Y.Z] [--skip-e2e] [pytest args...]
#
# Sets up the venv (scripts/_venv.sh; .venv for the default Airflow, .venv-af-X.Y.Z for another),
# then runs `ruff check .` and `python -m pytest`. Every argument that is not one of the two
# options above goes to pytest unchanged, e.g. `bash scripts/test.sh -k hook -x`.
#   --airflow-version X.Y.Z  test against that apache-airflow release (own venv)
#   --skip-e2e               export WA019_SKIP_E2E=1, which the end-to-end tests honour; without
#                            the flag the variable is removed from the environment, so e2e tests
#                            are never skipped silently.
# Exits non-zero if ruff or pytest fails, and also when pytest collects no test (its exit code 5).
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
wa019_parse_args "$@"  # --airflow-version, --help
set -- ${WA019_ARGS[@]+"${WA019_ARGS[@]}"}

skip_e2e=0
pytest_args=()
while (($#)); do
    case "$1" in
        --skip-e2e) skip_e2e=1; shift ;;
        *) pytest_args+=("$1"); shift ;;
    esac
done

wa019_setup_venv
cd "$REPO_ROOT"

if ((skip_e2e)); then
    export WA019_SKIP_E2E=1
    echo "NOTE: --skip-e2e given: end-to-end tests will be skipped (WA019_SKIP_E2E=1)"
elif [[ -n "${WA019_SKIP_E2E:-}" ]]; then
    echo "NOTE: ignoring WA019_SKIP_E2E from the environment; pass --skip-e2e to skip e2e tests" >&2
    unset WA019_SKIP_E2E
fi

echo "== Airflow $AIRFLOW_VERSION, Python $("$VENV_PY" -c 'import platform; print(platform.python_version())'), venv ${VENV_DIR#"$REPO_ROOT"/}"

ruff_rc=0
echo "== ruff check ."
ruff check . || ruff_rc=$?

# ${a[@]+"${a[@]}"}: with no pytest arguments, "${pytest_args[@]}" is an error in bash < 4.4.
echo "== python -m pytest${pytest_args[*]+ ${pytest_args[*]}}"
pytest_rc=0
python -m pytest ${pytest_args[@]+"${pytest_args[@]}"} </dev/null || pytest_rc=$?

if ((pytest_rc == 5)); then
    echo "FAILED: pytest collected no tests (exit code 5)" >&2
fi
if ((ruff_rc != 0)); then
    echo "FAILED: ruff check found problems (exit code $ruff_rc, see above)" >&2
fi
if ((pytest_rc != 0 || ruff_rc != 0)); then
    exit 1
fi
