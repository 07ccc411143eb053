#!/usr/bin/env bash
# Build the sdist and the wheel, then prove the wheel works where nothing else is installed.
#
#   bash scripts/check_dist.sh [--airflow-version X.Y.Z] [--keep]
#
# 1. `uv build` (sdist first, then the wheel built *from the sdist*, so a file missing from the
#    sdist breaks the wheel build) into a temporary folder;
# 2. checks what is inside: the wheel has the package, its provider entry point and pytest plugin,
#    and no tests; the sdist has README, pyproject, tests and example DAGs;
# 3. installs the wheel and apache-airflow==X.Y.Z (default: the project's newest) into a new,
#    empty venv, imports every module of the package there (a runtime dependency missing from
#    pyproject.toml fails here), and checks that `airflow providers list` shows
#    airflow-provider-wa019 at the wheel's version.
# Uses the project venv's uv (scripts/_venv.sh sets it up). Temporary files are removed at exit
# unless --keep is given. Exits non-zero on the first failed check.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
wa019_parse_args "$@"  # --airflow-version, --help
keep=0
for arg in ${WA019_ARGS[@]+"${WA019_ARGS[@]}"}; do
    case "$arg" in
        --keep) keep=1 ;;
        *) echo "error: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done
airflow_version="${AIRFLOW_VERSION:-$WA019_DEFAULT_AIRFLOW_VERSION}"
if ! wa019_valid_airflow_version "$airflow_version"; then
    echo "error: bad Airflow version '$airflow_version' (expected e.g. 3.0.6)" >&2
    exit 1
fi

# The project venv (default Airflow) only provides uv and the Python that builds the clean venv.
unset AIRFLOW_VERSION
wa019_setup_venv
cd "$REPO_ROOT"
UV="$VENV_DIR/bin/uv"

work="$(mktemp -d "${TMPDIR:-/tmp}/wa019-dist.XXXXXX")"
if ((keep)); then
    echo "dist: keeping $work"
else
    trap 'rm -rf "$work"' EXIT
fi
fail() { echo "FAILED: $*" >&2; exit 1; }

echo "== uv build (sdist, then the wheel from it)"
"$UV" build --quiet --out-dir "$work/dist" "$REPO_ROOT" || fail "uv build"
shopt -s nullglob
wheels=("$work"/dist/*.whl)
sdists=("$work"/dist/*.tar.gz)
((${#wheels[@]} == 1 && ${#sdists[@]} == 1)) || fail "expected one wheel and one sdist, got: $(ls "$work/dist")"
wheel="${wheels[0]}"
sdist="${sdists[0]}"
echo "   $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB), $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

echo "== contents"
"$VENV_PY" - "$wheel" "$sdist" <<'EOF' || fail "distribution contents"
import sys, tarfile, zipfile

wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
problems = []
for required in (
    "airflow_provider_wa019/__init__.py",
    "airflow_provider_wa019/get_provider_info.py",
    "airflow_provider_wa019/hooks/whatsapp.py",
    "airflow_provider_wa019/operators/whatsapp.py",
    "airflow_provider_wa019/testing/simulator.py",
):
    if required not in names:
        problems.append(f"wheel lacks {required}")
if any(n.startswith(("tests/", "example_dags/", "benchmarks/")) for n in names):
    problems.append("wheel contains tests, example DAGs or benchmarks")
dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
zf = zipfile.ZipFile(wheel)
entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
if "[apache_airflow_provider]" not in entry_points or "get_provider_info:get_provider_info" not in entry_points:
    problems.append("wheel lacks the apache_airflow_provider entry point")
if "[pytest11]" not in entry_points:
    problems.append("wheel lacks the pytest11 entry point of the simulator fixtures")
metadata = zf.read(f"{dist_info}/METADATA").decode()
for field in ("Requires-Python:", "Requires-Dist: apache-airflow>=", "License-Expression:"):
    if field not in metadata:
        problems.append(f"wheel METADATA lacks {field!r}")
members = [m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m]
for required in ("README.md", "pyproject.toml", "tests/conftest.py", "example_dags/example_whatsapp_send.py"):
    if required not in members:
        problems.append(f"sdist lacks {required}")
# Only what pyproject's sdist include names (hatch adds PKG-INFO and .gitignore). Anything else,
# e.g. a venv the .gitignore does not cover, means the include patterns picked up stray files.
allowed = {"airflow_provider_wa019", "tests", "example_dags", "README.md", "pyproject.toml", "PKG-INFO",
           ".gitignore", "LICENSE", "NOTICE"}
stray = sorted({m.split("/", 1)[0] for m in members} - allowed)
if stray:
    problems.append(f"sdist holds unexpected top-level entries: {', '.join(stray)}")
for line in metadata.splitlines():
    if line.startswith(("Requires-Python", "Requires-Dist: apache-airflow>=")):
        print("  ", line)
print(f"   wheel: {len(names)} files; sdist: {len(members)} files")
for problem in problems:
    print("  ", problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

echo "== clean venv: the wheel + apache-airflow==$airflow_version, nothing else"
base_py="${PYTHON:-python3}"
"$base_py" -m venv "$work/venv" || fail "python -m venv"
wa019_resolve_opts "$airflow_version"  # the same dependency cut-off as the project venvs
if [[ -n "$WA019_CUTOFF" ]]; then
    echo "   dependencies as of $WA019_CUTOFF"
fi
start=$SECONDS
"$UV" pip install --quiet --python "$work/venv/bin/python" ${WA019_RESOLVE_OPTS[@]+"${WA019_RESOLVE_OPTS[@]}"} \
    "$wheel" "apache-airflow==$airflow_version" >"$work/install.log" 2>&1 \
    || { tail -n 30 "$work/install.log" >&2; fail "installing the wheel"; }
echo "   installed in $((SECONDS - start)) s"

export AIRFLOW_HOME="$work/airflow-home"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
unset AIRFLOW_CONFIG
(cd "$work" && exec "$work/venv/bin/python" -) <<'EOF' || fail "importing the installed package"
import importlib, pkgutil, sys
import airflow_provider_wa019 as pkg

assert "/site-packages/" in pkg.__file__, f"imported from {pkg.__file__}, not the installed wheel"
# Every module, except the pytest plugin (pytest is a test dependency, not a runtime one).
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if m.name != "airflow_provider_wa019.testing.pytest_plugin"]
for name in names:
    importlib.import_module(name)
print(f"   imported {len(names) + 1} modules from {pkg.__file__.rsplit('/', 2)[0]}")
EOF

version="$("$work/venv/bin/python" -c 'from importlib.metadata import version; print(version("airflow-provider-wa019"))')"
(cd "$work" && "$work/venv/bin/airflow" providers list) >"$work/providers.txt" 2>"$work/providers.err" \
    || { cat "$work/providers.err" >&2; fail "airflow providers list"; }
line="$(grep -E "^airflow-provider-wa019[[:space:]]*\|" "$work/providers.txt" || true)"
[[ -n "$line" ]] || { cat "$work/providers.txt" "$work/providers.err" >&2; fail "airflow providers list does not show airflow-provider-wa019"; }
[[ "$line" == *"$version"* ]] || fail "airflow providers list shows '$line', expected version $version"
echo "   airflow providers list: $(echo "$line" | tr -s ' ')"
# The webhook plugin comes with the package (entry point airflow.plugins): nothing to configure.
(cd "$work" && "$work/venv/bin/airflow" plugins -o json) >"$work/plugins.json" 2>"$work/plugins.err" \
    || { cat "$work/plugins.err" >&2; fail "airflow plugins"; }
"$work/venv/bin/python" -c 'import json, sys; names = [p["name"] for p in json.load(open(sys.argv[1]))]; sys.exit("wa019_webhook" not in names)' "$work/plugins.json" \
    || { cat "$work/plugins.json" "$work/plugins.err" >&2; fail "airflow plugins does not list wa019_webhook"; }
echo "   airflow plugins: wa019_webhook"
echo "dist check passed: $(basename "$wheel") installs alone with Airflow $airflow_version and is discovered"
