"""WhatsAppAsyncHook (aiohttp) against real HTTP on 127.0.0.1: the sync hook's contract, awaited.

1. Every row of the fault matrix (tests/fault_rows.py, the rows tests/test_faults.py holds the
   sync hook to) through the async hook: the same error type, reason, status and text, the same
   number of requests reaching the server, the same deliveries, within the same time bounds.
2. The template listing's own rules (a read: gateway errors and timeouts retried or "nothing
   was sent").
3. Invalid input refused before any request, as the sync hook refuses it.
4. The same requests on the wire as the sync hook (path, JSON, headers), one kept-alive
   connection, the connection read once through Airflow's async lookup.
5. The token: blanked in answers that echo it, absent from reprs, errors (with their chains:
   aiohttp's exceptions carry the request headers) and logs.
6. Bounded answers: size caps after decompression, whole body within the read timeout.
7. aiohttp is imported only when an async path runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import traceback
import tracemalloc
import zlib
from urllib.parse import quote

import pytest
from airflow import __version__ as airflow_version
from airflow_support import FAST, WA019_CONN_ID, set_connection_env
from fault_rows import CLIENT, MATRIX, connect, fault_server, settled_count
from fault_support import canned_server, gzip_bomb

from airflow_provider_wa019.api import WhatsAppTemplate
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook

# Base64 tokens hold "/" and "+": PHP's json_encode writes "/" as "\/".
TOKEN = "eyJhbGciOi/J9.abc+def/ghi=="
TEMPLATES = [{"name": "hello", "body": "Hi {{1}}"}]


def run(coro):
    return asyncio.run(coro)


async def _send(**kwargs):
    async with WhatsAppAsyncHook() as hook:
        return await hook.send_message(**{"to": CLIENT, "body": "Your order shipped", **kwargs})


def send(**kwargs):
    """One ``send_message`` through a fresh async hook, on a fresh event loop."""
    return run(_send(**kwargs))


@pytest.fixture
def sim(make_sim):
    return make_sim(token=TOKEN, templates=TEMPLATES, open_windows=[CLIENT])


# --------------------------------------------------------------------------------------------
# 1. The fault matrix


@pytest.mark.parametrize("name", MATRIX, ids=list(MATRIX))
def test_fault_through_the_async_hook(name, wa019_env, make_sim):
    fault = MATRIX[name]
    with fault_server(fault, make_sim) as server:
        connect(wa019_env, fault, server)
        started = time.monotonic()
        if fault.hook is None:
            result = send()
            assert result.unique
            if server.sim is not None and server.sim.sent:
                assert result.unique == server.sim.sent[-1]["unique"]
        else:
            # Nothing but the provider's typed errors escapes, and exactly the documented one.
            with pytest.raises(WhatsAppError) as err:
                send()
            assert type(err.value) is fault.hook, repr(err.value)
            if fault.reason is not None:
                assert err.value.reason == fault.reason
            if fault.http_status is not None:
                assert err.value.http_status == fault.http_status
            if fault.text is not None:
                assert re.search(fault.text, str(err.value)), str(err.value)
            assert err.value.retryable == (fault.task[1] == 2)
            # No aiohttp exception rides along: its request_info holds the request's headers.
            assert not _library_errors(err.value), _library_errors(err.value)
        elapsed = time.monotonic() - started
        assert settled_count(server.count, fault.hook_requests) == fault.hook_requests
        if fault.answers is not None:
            assert server.answers() == list(fault.answers)
        if fault.delivered is not None:
            assert len(server.sim.sent) == fault.delivered
        low, high = fault.seconds
        assert low < elapsed < high


def _library_errors(err: BaseException) -> list[BaseException]:
    """aiohttp's exceptions in ``err``'s chain of causes and contexts."""
    chain, current = [], err.__cause__ or err.__context__
    while current is not None:
        if type(current).__module__.split(".")[0] == "aiohttp":
            chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def test_both_hooks_raise_the_same_text_for_the_same_fault(wa019_env, make_sim):
    # The texts come from one module (answers.py): spot-check a few rows word for word.
    for name in ("500", "502 throughout", "429 without Retry-After throughout", "reason 6 throughout"):
        fault = MATRIX[name]
        texts = []
        for hook_send in (lambda: WhatsAppHook().send_message(CLIENT, "Your order shipped"), send):
            with fault_server(fault, make_sim) as server:
                connect(wa019_env, fault, server)
                with pytest.raises(WhatsAppError) as err:
                    hook_send()
                texts.append(str(err.value))
        assert texts[0] == texts[1], name


# --------------------------------------------------------------------------------------------
# 2. The template listing: a read sends nothing


@pytest.mark.parametrize("status", [502, 504, 503])
def test_gateway_and_overload_errors_on_a_listing_are_retried(sim, status):
    sim.fail_next(2, status=status, path="/whatsapp-api/get-phone-templates")

    async def listing():
        async with WhatsAppAsyncHook() as hook:
            return await hook.get_templates()

    [template] = run(listing())
    assert template.name == "hello"
    assert [r.response_status for r in sim.requests] == [status, status, 200]


def test_a_listing_without_an_answer_is_transient_not_delivery_unknown(sim):
    sim.fail_next(5, delay=1.0)

    async def listing():
        async with WhatsAppAsyncHook() as hook:
            return await hook.get_templates()

    with pytest.raises(WhatsAppTransientError, match=r"template listing: no answer .* nothing was sent"):
        run(listing())


def test_check_template_reads_the_listing_once_per_hook(sim):
    async def sends():
        async with WhatsAppAsyncHook() as hook:
            for _ in range(3):
                await hook.send_template(CLIENT, "hello", ["Dana"], check_template=True)
            with pytest.raises(WhatsAppValidationError, match="has no such template"):
                await hook.send_template(CLIENT, "nope", check_template=True)

    run(sends())
    paths = [r.path for r in sim.requests]
    assert paths.count("/api/whatsapp/sendTemplate") == 3
    assert len([p for p in paths if p.startswith("/whatsapp-api/get-phone-templates")]) == 1
    assert [s["body"] for s in sim.sent] == ["Hi Dana"] * 3


def test_window_fallback_sends_the_template(sim):
    async def go():
        async with WhatsAppAsyncHook() as hook:
            return await hook.send_message_or_template(
                "972520000001", "hi", fallback_template="hello", fallback_variables=["Dana"]
            )

    result, sent_as = run(go())
    assert sent_as == "template"
    assert sim.sent[-1]["unique"] == result.unique
    assert [r.response_json.get("reason") for r in sim.requests] == [8, 1]


# --------------------------------------------------------------------------------------------
# 3. Invalid input is refused before any request


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"to": "12", "body": "hi"}, "to"),
        ({"to": CLIENT, "body": ""}, "body"),
        ({"to": CLIENT, "body": "x" * 4097}, "body"),
        ({"to": CLIENT, "body": "hello\x00world"}, "body"),
        ({"to": CLIENT, "body": "hi", "reply_to": "two words"}, "reply_to"),
        ({"to": CLIENT, "body": "hi", "sender": "12"}, "sender"),
        ({"template": "hello", "variables": ["line\nbreak"]}, "variables[0]"),
        ({"template": "hello", "variables": [str(n) for n in range(11)]}, "variables"),
        ({"template": "", "variables": []}, "template"),
        ({"template": "hello", "header_type": 3, "header_link": "http://x.test/a.png"}, "header_link"),
        (
            {"template": WhatsAppTemplate("1", "hello", "he", "Hi {{1}}", "approved"), "variables": []},
            "variables",
        ),
    ],
)
def test_invalid_input_is_refused_before_any_request(sim, call, field):
    async def go():
        async with WhatsAppAsyncHook() as hook:
            if "template" in call:
                await hook.send_template(CLIENT, **call)
            else:
                await hook.send_message(**call)

    with pytest.raises(WhatsAppValidationError) as err:
        run(go())
    assert err.value.field == field

    # The sync hook refuses it with the same words.
    def sync_send():
        with WhatsAppHook() as hook:
            if "template" in call:
                hook.send_template(CLIENT, **call)
            else:
                hook.send_message(**call)

    with pytest.raises(WhatsAppValidationError) as sync_err:
        sync_send()
    assert str(sync_err.value) == str(err.value)
    assert sim.requests == []


@pytest.mark.parametrize(
    ("conn", "error", "fragment"),
    [
        ({"password": None}, WhatsAppConfigError, "has no API token"),
        ({"password": "two words"}, WhatsAppConfigError, "cannot carry"),
        ({"sender": None}, WhatsAppConfigError, "no sender"),
        ({"timeout": "soon"}, WhatsAppConfigError, "'timeout'"),
        ({"max_attempts": 0}, WhatsAppConfigError, "'max_attempts'"),
        ({"proxies": "http://proxy"}, WhatsAppConfigError, "'proxies'"),
        ({"host": "http://user:pw@127.0.0.1:1"}, WhatsAppConfigError, "user name or password"),
    ],
)
def test_unusable_connections_are_refused_before_any_request(make_sim, wa019_env, conn, error, fragment):
    sim = make_sim(open_windows=[CLIENT])
    wa019_env(sim, **{**FAST, **conn})
    with pytest.raises(error, match=fragment) as err:
        send()
    assert "pw" not in str(err.value)
    assert sim.requests == []


@pytest.mark.skipif(
    tuple(int(p) for p in airflow_version.split(".")[:2]) < (3, 3),
    reason=f"Airflow {airflow_version} refuses such a connection itself, before any hook reads it",
)
@pytest.mark.parametrize(
    ("extra", "fragment"), [('{"sender": 9727', "not valid JSON"), ("[1, 2]", "must be a JSON object")]
)
def test_an_extra_that_is_no_json_object_is_named(make_sim, monkeypatch, extra, fragment):
    sim = make_sim(open_windows=[CLIENT], connection=False)
    set_connection_env(
        monkeypatch, WA019_CONN_ID, conn_type="wa019", host=sim.base_url, password=TOKEN, extra=extra
    )
    with pytest.raises(WhatsAppConfigError, match=fragment):
        send()
    assert sim.requests == []


# --------------------------------------------------------------------------------------------
# 4. On the wire: as the sync hook; one connection; settings read once


def test_requests_on_the_wire_match_the_sync_hook(sim):
    with WhatsAppHook() as hook:
        hook.send_message(CLIENT, "line one\nline two ✓", reply_to="wamid-123")
        hook.send_template(CLIENT, "hello", ["Dana"])
    send(body="line one\nline two ✓", reply_to="wamid-123")

    async def template():
        async with WhatsAppAsyncHook() as hook:
            await hook.send_template(CLIENT, "hello", ["Dana"])

    run(template())
    sync_msg, sync_tpl, async_msg, async_tpl = sim.requests
    for sync_req, async_req in ((sync_msg, async_msg), (sync_tpl, async_tpl)):
        assert (async_req.method, async_req.path, async_req.json) == (
            sync_req.method,
            sync_req.path,
            sync_req.json,
        )
        for header in ("Authorization", "Content-Type", "Accept", "Accept-Encoding", "User-Agent"):
            assert async_req.headers[header] == sync_req.headers[header], header
    assert async_req.headers["Authorization"] == "Bearer ***"  # the simulator's mark of the right token


def test_results_are_the_typed_results_of_the_sync_hook(sim):
    result = send()
    [sent] = sim.sent
    assert result.unique == sent["unique"]
    assert (result.reason, result.status, result.to, result.sender) == (1, "OK", CLIENT, sim.sender)
    assert result.to_dict()["unique"] == result.unique
    with pytest.raises(TypeError):
        result.raw["unique"] = "other"


def test_one_session_and_one_connection_serve_every_call(sim):
    async def go():
        async with WhatsAppAsyncHook() as hook:
            client = await hook.get_conn()
            for _ in range(4):
                await hook.send_message(CLIENT, "hi")
            assert await hook.get_conn() is client
        assert client.closed

    run(go())
    assert len({r.client_port for r in sim.requests}) == 1


def test_the_connection_is_read_once_through_the_async_lookup(sim, monkeypatch):
    from airflow.sdk import BaseHook

    calls = {"aget": 0}
    real = BaseHook.aget_connection.__func__

    async def counting(cls, conn_id):
        calls["aget"] += 1
        return await real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "aget_connection", classmethod(counting))

    async def go():
        async with WhatsAppAsyncHook() as hook:
            cfg = await hook.aget_settings()
            await hook.send_message(CLIENT, "one")
            # A changed connection is not read again by this hook.
            monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", "{}")
            await hook.send_message(CLIENT, "two")
            assert hook.settings is cfg
            return cfg

    cfg = run(go())
    assert cfg.base_url == sim.base_url
    assert len(sim.sent) == 2
    from airflow.sdk.definitions.connection import Connection

    if hasattr(Connection, "aextra_dejson"):
        # Airflow 3.3.2+: its async lookup never blocks the loop, so it is the one used.
        assert calls["aget"] == 1
    else:
        # Before 3.3.2 that lookup masks secrets with a blocking call: the sync one runs in a
        # thread instead (common.compat's choice).
        assert calls["aget"] == 0


def test_one_hook_serves_one_event_loop_after_another(sim):
    hook = WhatsAppAsyncHook()

    async def send_and_close(text: str):
        async with hook:  # closes this loop's session; the settings stay read
            return await hook.send_message(CLIENT, text)

    assert run(send_and_close("first loop")).unique
    assert run(send_and_close("second loop")).unique  # a new session on the new loop
    assert [m["body"] for m in sim.sent] == ["first loop", "second loop"]


def test_sync_settings_work_without_an_event_loop(sim):
    hook = WhatsAppAsyncHook(timeout=(0.2, 0.4), max_attempts=2)
    assert hook.settings.timeout == (0.2, 0.4)
    assert hook.settings.max_attempts == 2
    assert run(hook.aget_settings()) is hook.settings


def test_concurrent_sends_share_the_hook(sim):
    numbers = [f"9725012345{n:02d}" for n in range(20)]
    for number in numbers:
        sim.open_window(number)

    async def go():
        async with WhatsAppAsyncHook() as hook:
            return await asyncio.gather(*(hook.send_message(n, "hi") for n in numbers))

    results = run(go())
    assert sorted(r.to for r in results) == sorted(numbers)
    assert len(sim.sent) == 20


# --------------------------------------------------------------------------------------------
# 5. The token


def token_spellings(secret: str = TOKEN) -> list[str]:
    """The token as an answer could echo it: raw, JSON-escaped both ways, percent-encoded (hex
    digits in either case)."""
    percent = quote(secret, safe="")
    return [
        secret,
        secret.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in secret),
        "".join(f"\\u{ord(c):04X}" for c in secret),
        percent,
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), percent),
    ]


def assert_no_token(*texts: object) -> None:
    for text in texts:
        blob = text if isinstance(text, str) else json.dumps(text, default=repr)
        for spelling in token_spellings():
            assert spelling not in blob, f"token spelling {spelling!r} in {blob[:300]!r}"


def error_texts(err: BaseException) -> str:
    parts = ["".join(traceback.format_exception(err))]
    current: BaseException | None = err
    while current is not None:
        parts += [repr(current), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("echo", token_spellings())
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"body": '{"status":"FAIL","reason":4,"message":"bad to; auth was Bearer %s"}'}, WhatsAppAPIError),
        ({"status": 401, "body": '{"message":"Bearer %s is not valid"}'}, WhatsAppAPIError),
        ({"body": "<html>debug: Authorization: Bearer %s</html>"}, WhatsAppResponseError),
        ({"status": 404, "body": "<html>no route; header Bearer %s</html>"}, WhatsAppResponseError),
        ({"body": '{"status":"OK","reason":1,"unique":"m-1","echo":"%s"}'}, None),
    ],
    ids=["refusal", "401", "unexpected body", "404 page", "success"],
)
def test_an_echoed_token_is_blanked(sim, answer, error, echo):
    sim.fail_next(1, **{**answer, "body": answer["body"].replace("%s", echo)})
    if error is None:
        result = send()
        assert_no_token(result.to_dict(), repr(result), dict(result.raw))
        assert result.raw["echo"] == "***"
    else:
        with pytest.raises(error) as err:
            send()
        assert_no_token(error_texts(err.value), getattr(err.value, "response", None))


def test_the_token_is_in_no_repr_error_or_log(make_sim, wa019_env, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    sim = make_sim(token=TOKEN, open_windows=[CLIENT])
    texts: list[str] = []

    async def go():
        async with WhatsAppAsyncHook() as hook:
            await hook.send_message(CLIENT, "hi")
            client = await hook.get_conn()
            texts.extend([repr(hook), repr(hook.settings), repr(client), repr(vars(hook))])

    run(go())
    # A wrong token, a refused connect, a dropped answer: every error chain searched.
    for conn in ({"password": TOKEN + "x"}, {"host": "http://127.0.0.1:1"}):
        wa019_env(sim, **{**FAST, **conn})
        with pytest.raises(WhatsAppError) as err:
            send()
        texts.append(error_texts(err.value))
    from fault_support import BrokenServer

    with BrokenServer("hang_up") as broken:
        wa019_env(sim, **{**FAST, "host": broken.base_url})
        with pytest.raises(WhatsAppDeliveryUnknownError) as err:
            send()
        texts.append(error_texts(err.value))
    out = capsys.readouterr()
    assert_no_token(*texts, caplog.text, out.out, out.err)
    assert "Sending WhatsApp message to ********4567" in caplog.text + out.out + out.err


# --------------------------------------------------------------------------------------------
# 6. Bounded answers


def measured_send() -> tuple[BaseException, int]:
    async def go():
        async with WhatsAppAsyncHook() as hook:
            await hook.aget_settings()  # connection parsing is not what is measured
            tracemalloc.start()
            try:
                try:
                    await hook.send_message(CLIENT, "hi")
                except WhatsAppError as err:
                    return err, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        raise AssertionError("the send succeeded")

    return run(go())


@pytest.mark.parametrize("kind", ["gzip bomb", "100 MB body", "deflate bomb"])
def test_a_huge_answer_is_never_held_in_memory(wa019_env, kind):
    if kind == "gzip bomb":  # ~200 KB on the wire, 200 MB inflated
        chunks = [gzip_bomb()]  # the fault matrix's, made once per process
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % sum(
            map(len, chunks)
        )
    elif kind == "deflate bomb":
        chunks = [zlib.compress(b"0" * 50_000_000, 9)]
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n" % len(chunks[0])
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
        chunks = (b"x" * 1_000_000 for _ in range(100))
    with canned_server(head, iter(chunks)) as (base_url, _):
        wa019_env(host=base_url, password=TOKEN, **FAST)
        err, peak = measured_send()
    assert isinstance(err, WhatsAppResponseError), repr(err)
    assert "larger than 64 KiB" in str(err)
    assert peak < 5_000_000, f"{peak / 1e6:.1f} MB held while reading the answer"


def test_a_trickling_answer_cannot_outlast_the_read_timeout(wa019_env):
    total = 200
    body = (b'{"status":"OK","reason":1,"unique":"m-1","pad":"' + b"x" * total)[:total]
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode()
    with canned_server(head, (bytes([b]) for b in body), pause=0.1) as (base_url, sent):
        wa019_env(host=base_url, password=TOKEN, **FAST)
        started = time.monotonic()
        with pytest.raises(WhatsAppDeliveryUnknownError, match=r"took more than 0\.5 s"):
            send()
        assert time.monotonic() - started < 1.5
    # Each byte came well within the 0.5 s read timeout; the whole answer never did.
    assert sent[0] < 50


def test_a_gzip_answer_is_decoded_even_in_tiny_pieces(wa019_env):
    # A compressed stream handed over a few bytes at a time, some inflating to nothing yet.
    answer = json.dumps({"status": "OK", "reason": 1, "unique": "m-gz", "to": CLIENT}).encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    data = compressor.compress(answer) + compressor.flush()
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(data)
    with canned_server(head, iter(pieces), pause=0.005) as (base_url, _):
        wa019_env(host=base_url, password=TOKEN, **FAST)
        assert send().unique == "m-gz"


def test_an_encoding_that_was_not_asked_for_is_refused(wa019_env):
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n"
    with canned_server(head, iter([b"abcd"])) as (base_url, _):
        wa019_env(host=base_url, password=TOKEN, **FAST)
        with pytest.raises(WhatsAppResponseError, match="compressed with 'br'"):
            send()


def test_a_large_error_page_is_cut_not_refused(sim):
    sim.fail_next(1, status=404, body="<html>" + "x" * 200_000 + "</html>")
    with pytest.raises(WhatsAppResponseError, match="HTTP 404") as err:
        send()
    assert len(err.value.body_excerpt) <= 210


def test_a_large_template_listing_is_read_whole(sim):
    for n in range(150):  # about 160 KB: above a send's cap, within the listing's
        sim.add_template(f"t{n:03d}", "x" * 1000 + " {{1}}")

    async def listing():
        async with WhatsAppAsyncHook() as hook:
            return await hook.get_templates()

    assert len(run(listing())) == 151


# --------------------------------------------------------------------------------------------
# 7. Import cost


def test_aiohttp_loads_only_with_the_async_hook():
    probe = (
        "import sys\n"
        "import airflow_provider_wa019.operators.whatsapp, airflow_provider_wa019.notifications.whatsapp\n"
        "import airflow_provider_wa019.hooks.whatsapp\n"
        "print('aiohttp' in sys.modules)\n"
        "import airflow_provider_wa019.hooks.whatsapp_async\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
