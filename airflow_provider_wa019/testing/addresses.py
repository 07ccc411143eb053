"""Loopback addresses that fail on purpose: one whose connects time out, one that refuses them.

For testing a client's connect timeout and connection-error handling without touching any
address but 127.0.0.1::

    from airflow_provider_wa019.testing import refused_address, unresponsive_address

    with unresponsive_address() as base_url:   # "http://127.0.0.1:PORT"; connects hang
        requests.get(base_url, timeout=(0.3, 5))   # -> requests.exceptions.ConnectTimeout

    with refused_address() as base_url:        # connects are refused at once
        requests.get(base_url, timeout=5)          # -> requests.exceptions.ConnectionError
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["refused_address", "unresponsive_address"]

#: A loopback handshake takes microseconds; a connect still pending after this is being ignored.
_FILL_TIMEOUT = 0.2
_MAX_FILLERS = 16


@contextmanager
def unresponsive_address(host: str = "127.0.0.1") -> Iterator[str]:
    """Yield ``http://127.0.0.1:PORT`` where TCP connects time out instead of completing.

    How: a socket listens with backlog 0 and never accepts; a few connections of our own fill its
    accept queue, after which Linux silently drops further SYNs (``tcp_abort_on_overflow`` = 0,
    the default), so a client's ``connect()`` waits until its own connect timeout. Everything is
    closed on exit. Raises ``RuntimeError`` if this kernel does not behave that way.
    """
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind((host, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(_MAX_FILLERS):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(_FILL_TIMEOUT)
            try:
                filler.connect((host, port))
            except TimeoutError:
                filler.close()  # its SYN was dropped: the queue is full
                break
            except OSError:
                filler.close()
                raise
            stack.callback(filler.close)  # keep it: it holds a slot of the accept queue
        else:
            raise RuntimeError("could not fill the accept queue: connects to it would not time out")
        yield f"http://{host}:{port}"


@contextmanager
def refused_address(host: str = "127.0.0.1") -> Iterator[str]:
    """Yield ``http://127.0.0.1:PORT`` where TCP connects are refused (RST) at once.

    The port is bound but never listened on, and stays bound until exit, so no other program
    can take it meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield f"http://{host}:{sock.getsockname()[1]}"
