# shellcheck shell=bash
# Shared by scripts/test.sh, demo.sh and check_dist.sh: `source` it first; do not run it.
# Brings in scripts/_venv.sh (the venv set-up and the dependency cut-offs of old Airflow releases)
# and adds the command-line options all three take, parsed here once.
#
# These scripts are the README's commands, so they run on the bash that macOS ships, 3.2, as well as
# on bash 5. In them: no associative arrays (declare -A), no `exec {var}>`, no ${var,,} / ${var^^},
# no mapfile/readarray, no negative array indices, no `|&`, `;&`, `;;&`, declare -g, [[ -v ]],
# nor a here-document inside $( ) (bash 3.2 misparses its quotes and parentheses: put it in a
# function and call that). With set -u, bash before 4.4 calls "${a[@]}" and "${a[*]}" of an empty
# array unbound: expand a possibly empty array as ${a[@]+"${a[@]}"}. Tools: what macOS has too
# (BSD sed and awk, BSD mktemp that fills in trailing X's only, no flock(1); no GNU-only options).

# A CDPATH from the user's shell would make `cd dir` print the directory, and $(cd dir && pwd) two lines.
unset CDPATH

# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

# wa019_usage: prints the running script's header comment (line 2 up to the first line that is not
# a comment), without the leading "# ".
wa019_usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# wa019_parse_args "$@": takes the options every script has, wherever they stand:
#   --airflow-version X.Y.Z, --airflow-version=X.Y.Z   sets and exports AIRFLOW_VERSION (when not
#                                                     given: AIRFLOW_VERSION from the environment,
#                                                     or "" for the default release)
#   -h, --help                                        prints the script's header comment, exits 0
# and keeps every other argument, in order, in the array WA019_ARGS for the script's own options.
# A missing value is a usage error: exit status 2. Typical use:
#   wa019_parse_args "$@"
#   set -- ${WA019_ARGS[@]+"${WA019_ARGS[@]}"}
wa019_parse_args() {
    WA019_ARGS=()
    while (($#)); do
        case "$1" in
            --airflow-version)
                if (($# < 2)); then
                    echo "error: --airflow-version needs a value" >&2
                    exit 2
                fi
                AIRFLOW_VERSION="$2"
                shift 2
                ;;
            --airflow-version=*) AIRFLOW_VERSION="${1#*=}"; shift ;;
            -h | --help) wa019_usage; exit 0 ;;
            *) WA019_ARGS+=("$1"); shift ;;
        esac
    done
    export AIRFLOW_VERSION="${AIRFLOW_VERSION:-}"
}
