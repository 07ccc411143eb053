"""Run the simulator from a shell: ``python -m airflow_provider_wa019.testing --port 8019``.

Prints two lines, then serves until SIGINT/SIGTERM (exit status 0)::

    base_url: http://127.0.0.1:8019
    AIRFLOW_CONN_WA019_DEFAULT={"conn_type": "wa019", "host": "http://127.0.0.1:8019", ...}

Point Airflow at it by exporting the second line. Drive it from other processes with the
``/__sim__/`` control endpoints (``POST /__sim__/open-window {"number": "972501234567"}`` ...).

Numbers (``--sender``, ``--open-window``, and those of the control endpoints) may be written as
people do ("+972 50-123-4567"): they are normalised to digits; one that is not 8-15 digits then
is a usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from airflow_provider_wa019.testing.checks import normalise_number
from airflow_provider_wa019.testing.simulator import DEFAULT_SENDER, DEFAULT_TOKEN, WhatsAppSimulator


def _template(spec: str) -> dict[str, str]:
    name, sep, body = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=BODY, got {spec!r}")
    return {"name": name, "body": body}


def _number(value: str) -> str:
    # Checked while parsing, so a typo is a usage error, not a traceback after the port is bound.
    try:
        return normalise_number(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_wa019.testing",
        description="Serve a simulator of the 019sms WhatsApp API on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8019, help="port; 0 picks a free one (default 8019)")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="bearer token to accept")
    _list_option(parser, "--sender", _number, "NUMBER", f"sender accounts (default {DEFAULT_SENDER})")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay per request")
    parser.add_argument(
        "--max-concurrency", type=int, default=None, metavar="N", help="requests handled at once"
    )
    _list_option(
        parser,
        "--open-window",
        _number,
        "NUMBER",
        "clients that just wrote to us (free-form messages to them are allowed for 24 h)",
    )
    _list_option(
        parser, "--template", _template, "NAME=BODY", "approved templates; {{1}}, {{2}} ... mark variables"
    )
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="deliver clients' messages (POST /__sim__/client-says) to this URL, as the platform would",
    )
    parser.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        default=os.environ.get("WA019_SIM_WEBHOOK_SECRET"),
        help="set as the webhook URL's secret parameter (default: $WA019_SIM_WEBHOOK_SECRET)",
    )
    return parser


def _list_option(
    parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any], metavar: str, help: str
) -> None:
    """An option taking one or more values, that may also be given again (the lists add up)."""
    parser.add_argument(flag, nargs="+", action="extend", default=[], type=kind, metavar=metavar, help=help)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sim = WhatsAppSimulator(
        token=args.token,
        senders=tuple(args.sender or (DEFAULT_SENDER,)),
        host=args.host,
        port=args.port,
        latency=args.latency,
        max_concurrency=args.max_concurrency,
        templates=args.template,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sim.start()
    try:
        for number in args.open_window:
            sim.open_window(number)
        conn_id, value = next(iter(sim.connection_env().items()))
        # Flushed at once: a parent process reads these two lines to find the port.
        print(f"base_url: {sim.base_url}", flush=True)
        print(f"{conn_id}={value}", flush=True)
        while not stop.wait(0.5):  # a timed wait, so signal handlers run promptly
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
