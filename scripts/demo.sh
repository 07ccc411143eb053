#!/usr/bin/env bash
# The project's demo (README: `bash scripts/demo.sh`): runs the example DAG wa019_example_send
# against the bundled 019sms WhatsApp simulator, with nothing else needed (no internet, no token).
#
#   bash scripts/demo.sh [--airflow-version X.Y.Z]
#
# 1. sets up the venv (scripts/_venv.sh);
# 2. starts the simulator on a free loopback port (python -m airflow_provider_wa019.testing),
#    with an open 24-hour window for 972501234567;
# 3. runs `airflow dags test wa019_example_send` with a throw-away AIRFLOW_HOME in .demo/
#    (SQLite, no example DAGs, DAGS_FOLDER=example_dags) and the simulator's connection in
#    AIRFLOW_CONN_WA019_DEFAULT;
# 4. prints the message id the DAG got back and what the simulator received.
# Exits non-zero if the DAG run failed or no message id was logged. The simulator is always
# stopped on exit. Logs stay in .demo/ (dag-test.log, simulator.err, db-migrate.log).
set -euo pipefail

while (($#)); do
    case "$1" in
        --airflow-version)
            [[ $# -ge 2 ]] || { echo "error: --airflow-version needs a value" >&2; exit 2; }
            AIRFLOW_VERSION="$2"; shift 2 ;;
        --airflow-version=*) AIRFLOW_VERSION="${1#*=}"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
export AIRFLOW_VERSION="${AIRFLOW_VERSION:-}"

# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
wa019_setup_venv
cd "$REPO_ROOT"

DAG_ID="wa019_example_send"
CLIENT="972501234567"
DEMO_DIR="$REPO_ROOT/.demo"
# WA019_DEMO_DAGS_FOLDER: only for trying this script with another folder holding that dag id.
DAGS_FOLDER="${WA019_DEMO_DAGS_FOLDER:-$REPO_ROOT/example_dags}"
mkdir -p "$DEMO_DIR"
rm -rf "$DEMO_DIR/airflow-home"
mkdir -p "$DEMO_DIR/airflow-home"

# --- simulator ---------------------------------------------------------------------------------
sim_pid=""
stop_simulator() {
    if [[ -n "$sim_pid" ]] && kill -0 "$sim_pid" 2>/dev/null; then
        kill -TERM "$sim_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$sim_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
    sim_pid=""
}
trap stop_simulator EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== starting the WhatsApp simulator"
PYTHONUNBUFFERED=1 python -m airflow_provider_wa019.testing --port 0 --open-window "$CLIENT" \
    >"$DEMO_DIR/simulator.out" 2>"$DEMO_DIR/simulator.err" </dev/null &
sim_pid=$!

for _ in $(seq 300); do  # up to 30 s
    [[ $(wc -l <"$DEMO_DIR/simulator.out") -ge 2 ]] && break
    if ! kill -0 "$sim_pid" 2>/dev/null; then
        echo "error: the simulator exited before it was ready:" >&2
        cat "$DEMO_DIR/simulator.out" "$DEMO_DIR/simulator.err" >&2
        exit 1
    fi
    sleep 0.1
done
base_url="$(sed -n '1s/^base_url: //p' "$DEMO_DIR/simulator.out")"
conn_line="$(sed -n '2p' "$DEMO_DIR/simulator.out")"
if [[ -z "$base_url" || "$conn_line" != AIRFLOW_CONN_WA019_DEFAULT=* ]]; then
    echo "error: unexpected simulator output (wanted 'base_url: ...' then 'AIRFLOW_CONN_WA019_DEFAULT=...'):" >&2
    cat "$DEMO_DIR/simulator.out" "$DEMO_DIR/simulator.err" >&2
    exit 1
fi
export AIRFLOW_CONN_WA019_DEFAULT="${conn_line#AIRFLOW_CONN_WA019_DEFAULT=}"
echo "   simulator at $base_url (pid $sim_pid); $CLIENT has an open 24-hour window"

# --- Airflow -----------------------------------------------------------------------------------
export AIRFLOW_HOME="$DEMO_DIR/airflow-home"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$DAGS_FOLDER"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
unset AIRFLOW_CONFIG

echo "== airflow db migrate (SQLite in ${AIRFLOW_HOME#"$REPO_ROOT"/})"
if ! python -m airflow db migrate >"$DEMO_DIR/db-migrate.log" 2>&1 </dev/null; then
    echo "error: airflow db migrate failed:" >&2
    tail -n 40 "$DEMO_DIR/db-migrate.log" >&2
    exit 1
fi

echo "== airflow dags test $DAG_ID"
set +e
python -m airflow dags test "$DAG_ID" </dev/null 2>&1 | tee "$DEMO_DIR/dag-test.log"
dag_rc=${PIPESTATUS[0]}
set -e
if ((dag_rc == 130 || dag_rc == 143)); then
    echo "interrupted" >&2
    exit "$dag_rc"
fi

# --- summary -----------------------------------------------------------------------------------
message_id="$(grep -oE 'WhatsApp message id: [^[:space:]]+' "$DEMO_DIR/dag-test.log" | tail -n 1 \
    | sed 's/^WhatsApp message id: //' || true)"
run_state="$(grep -oE 'DagRun Finished: .*state=[a-z_]+' "$DEMO_DIR/dag-test.log" | tail -n 1 \
    | sed -E 's/.*state=([a-z_]+)$/\1/' || true)"

echo
echo "================================= demo summary ================================="
echo "DAG run:             $DAG_ID -> ${run_state:-unknown} (airflow dags test exit code $dag_rc)"
if [[ -n "$message_id" && "$message_id" != "None" ]]; then
    echo "WhatsApp message id: $message_id"
else
    echo "WhatsApp message id: NOT FOUND (no 'WhatsApp message id: ...' line in the task logs)"
fi
echo "Simulator received:"
if ! python - "$base_url" <<'PY'; then
import json
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1] + "/__sim__/requests", timeout=10) as resp:
        requests = json.load(resp)
except (OSError, ValueError) as exc:
    sys.exit(f"  error: {exc}")
if not requests:
    print("  (no requests)")
for i, req in enumerate(requests, 1):
    sent = req.get("json") if isinstance(req.get("json"), dict) else {}
    got = req.get("response_json") if isinstance(req.get("response_json"), dict) else {}
    print(f"  {i}. {req.get('method')} {req.get('path')}  ->  HTTP {req.get('response_status')}")
    if sent:
        print(f"     to: {sent.get('to', '-')}  body: {json.dumps(sent.get('body', '-'), ensure_ascii=False)}")
    print(f"     response: unique={got.get('unique')!r} reason={got.get('reason')!r}"
          + (f" message={got['message']!r}" if got.get("message") else ""))
PY
    echo "  (could not read $base_url/__sim__/requests)"
fi
echo "Logs: ${DEMO_DIR#"$REPO_ROOT"/}/dag-test.log, simulator.err, db-migrate.log"
echo "================================================================================="

if [[ $dag_rc -ne 0 || "$run_state" == "failed" ]]; then
    echo "FAILED: the DAG run failed (see above)" >&2
    exit 1
fi
if [[ -z "$message_id" || "$message_id" == "None" ]]; then
    echo "FAILED: the DAG did not log a WhatsApp message id" >&2
    exit 1
fi
echo "OK: the DAG sent its message through the simulator."
