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
# Success is read from exit codes and from the simulator's own record (GET /__sim__/sent), never
# from Airflow's log lines: exits non-zero if `airflow dags test` fails (it does when the DAG run
# fails) or if the simulator did not accept exactly one message for 972501234567. The simulator is
# always stopped on exit. Logs stay in .demo/ (dag-test.log, simulator.err, db-migrate.log).
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
wa019_parse_args "$@"  # --airflow-version, --help
if ((${#WA019_ARGS[@]})); then
    echo "error: unknown argument '${WA019_ARGS[0]}' (try --help)" >&2
    exit 2
fi

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
        local i
        for ((i = 0; i < 50; i++)); do  # up to 5 s
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

for ((i = 0; i < 300; i++)); do  # up to 30 s
    if (($(wc -l <"$DEMO_DIR/simulator.out") >= 2)); then
        break
    fi
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

# --- the outcome -------------------------------------------------------------------------------
# Decided by the exit code above and by the simulator's record of what it accepted, not by the
# wording of Airflow's logs.

# sim_record MODE: reads the simulator's control endpoints.
#   message-id  exit 0 and print the message id (`unique`) if the simulator accepted exactly one
#               message for $CLIENT (GET /__sim__/sent); otherwise exit 1 and print why
#   requests    print every API request it answered, with its answer (GET /__sim__/requests)
# (A function holding the here-document, called inside $( ): bash 3.2 misparses a here-document
# written inside $( ).)
sim_record() {
    "$VENV_PY" - "$base_url" "$1" "$CLIENT" <<'PY'
import json
import sys
import urllib.request

base_url, mode, client = sys.argv[1:4]
endpoint = f"{base_url}/__sim__/{'sent' if mode == 'message-id' else 'requests'}"


def fail(why):
    print(f"  ({why})" if mode == "requests" else why)
    sys.exit(1)


try:
    with urllib.request.urlopen(endpoint, timeout=10) as resp:
        record = json.load(resp)
except (OSError, ValueError) as exc:
    fail(f"could not read {endpoint}: {exc}")
if not isinstance(record, list) or not all(isinstance(item, dict) for item in record):
    fail(f"unexpected answer from {endpoint}: {record!r:.200}")

if mode == "message-id":
    ids = [m.get("unique") for m in record if m.get("to") == client]
    if len(ids) == 1 and isinstance(ids[0], str) and ids[0]:
        print(ids[0])
        sys.exit(0)
    fail(f"the simulator's record (GET /__sim__/sent) holds {len(ids)} messages for {client}, expected 1")

if not record:
    print("  (no requests)")
for i, req in enumerate(record, 1):
    sent = req.get("json") if isinstance(req.get("json"), dict) else {}
    got = req.get("response_json") if isinstance(req.get("response_json"), dict) else {}
    print(f"  {i}. {req.get('method')} {req.get('path')}  ->  HTTP {req.get('response_status')}")
    if sent:
        print(f"     to: {sent.get('to', '-')}  body: {json.dumps(sent.get('body', '-'), ensure_ascii=False)}")
    print(f"     response: unique={got.get('unique')!r} reason={got.get('reason')!r}"
          + (f" message={got['message']!r}" if got.get("message") else ""))
PY
}

message_ok=0
if message_id="$(sim_record message-id)"; then
    message_ok=1
fi
if ((dag_rc == 0)); then
    run_state="success"
else
    run_state="failed"
fi

echo
echo "================================= demo summary ================================="
echo "DAG run:             $DAG_ID -> $run_state (airflow dags test exit code $dag_rc)"
if ((message_ok)); then
    echo "WhatsApp message id: $message_id"
else
    echo "WhatsApp message id: NOT FOUND ($message_id)"
fi
echo "Simulator received:"
sim_record requests || true
echo "Logs: ${DEMO_DIR#"$REPO_ROOT"/}/dag-test.log, simulator.err, db-migrate.log"
echo "================================================================================="

if ((dag_rc != 0)); then
    echo "FAILED: the DAG run failed: airflow dags test exited with $dag_rc (see above)" >&2
    exit 1
fi
if ((!message_ok)); then
    echo "FAILED: $message_id" >&2
    exit 1
fi
echo "OK: the DAG sent its message through the simulator."
