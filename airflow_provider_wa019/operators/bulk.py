"""WhatsAppBulkSendOperator: one message to many recipients in one task.

Like :mod:`airflow_provider_wa019.operators.whatsapp` (which re-exports it), this module is
imported at every parse of a DAG file that uses it, so it imports only Airflow's task SDK; the
bulk engine and the hook load when a task runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

# The compat layer resolves to airflow.sdk on every Airflow 3 release we support.
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    BaseOperator,
)

from airflow_provider_wa019.constants import DEFAULT_CONN_ID, DEFAULT_SKIP_REASONS, MAX_BULK_CONCURRENCY
from airflow_provider_wa019.operators.outcome import task_outcome

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["WhatsAppBulkSendOperator"]

#: Bodies ending with these are template files (found on the DAG's template search path).
_BULK_BODY_FILE_EXT = (".txt", ".j2")
#: At most the hook's pool size (``constants.POOL_MAXSIZE``).
_BULK_MAX_CONCURRENCY = MAX_BULK_CONCURRENCY
#: How long a task instance's ledger is kept after its last try started (``ledger_retention``):
#: ``bulk.variable_store.DEFAULT_LEDGER_RETENTION``, literal here so parsing imports no engine.
_BULK_LEDGER_RETENTION = timedelta(days=30)
#: Shorter would let cleanup delete a ledger between two tries (``retry_delay``) of its task.
_BULK_MIN_LEDGER_RETENTION = timedelta(days=1)


def _bulk_is_int(value: Any) -> bool:
    import numbers  # stdlib, already loaded; used at DAG parse time only

    # bool is an int to Python, but True is no meant count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _bulk_is_number(value: Any) -> bool:
    """A real, finite number (not a bool): inf would overflow int(), nan never compares."""
    import math
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bulk_is_reason_collection(value: Any) -> bool:
    from collections.abc import Mapping

    # A string is a collection too: "78" would silently mean reasons 7 and 8.
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Collection):
        return False
    return all(_bulk_is_int(reason) for reason in value)


class WhatsAppBulkSendOperator(BaseOperator):
    """Send one message to many recipients in one task: bounded concurrency and rate, an outcome
    per recipient, and no duplicates across the task's retries and clears.

    ::

        WhatsAppBulkSendOperator(
            task_id="notify",
            recipients=shipped_orders(),   # [{"to": "+972501234567", "name": "Dana", "order": "A-7"}, ...]
            body="Hi {{ name }}, order {{ order }} shipped ({{ ds }}).",
        )

    The message is ``body`` (rendered per recipient with the task context plus the recipient's
    values) or an approved ``template`` with per-recipient ``variables``. XCom ``return_value``
    is the summary ``{"total", "sent", "skipped", "failed", "invalid", "unknown"}``, XCom
    ``results`` one ``{"status", "unique", "reason", "error"}`` per number.

    Outcome, after every recipient was tried:

    * retried (``retries`` apply; the next try sends only to recipients not confirmed) on reason
      6, an unreachable API or an unknown delivery;
    * failed without retry over ``max_failure_ratio``, on a refused token or unusable connection
      (the bulk stops at once), or on answers that are not the API's JSON;
    * skipped when every recipient was skipped (``skip_on_reasons``, default 7 and 8);
    * success otherwise.

    Confirmed recipients are kept in a progress ledger of this task instance, in Airflow
    Variables, which no clear, ``clear_on_success`` or mark-success erases: see the README,
    "Bulk sends" and "No duplicates across retries and clears", for the ledger, its retention
    and what a hard kill can cause.

    :param recipients: numbers, or dicts with ``to`` and values (templated: an XComArg or Jinja).
        A Jinja string such as ``"{{ params.lst }}"`` or an ``xcom_pull`` renders to text: that
        text is read back as the list, whether JSON or a Python literal (Jinja's repr of a list).
    :param body: free-form text, rendered per recipient (not an Airflow template field: Airflow
        would render it once, before the recipients are known). A recipient for whom it cannot
        be rendered (any error: a missing value, a division by zero...) is reported invalid,
        with the error's type and text, and is not sent; the others are.
    :param template: approved template name (templated), instead of ``body``.
    :param variables: the template's ``{{1}}``.. values, each rendered per recipient.
    :param header_type: template header type (1 none, 3 image, 4 video, 5 document).
    :param header_link: https link of the template's media header, rendered per recipient.
    :param sender: ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the Airflow connection of type ``wa019``.
    :param max_concurrency: requests in flight at most (an int, 1 to 32, default 4).
    :param rate_per_second: sends started in any one-second window at most (a finite number > 0;
        default None: no limit).
        Per message, not per HTTP request: the hook's own retries of one message are not counted.
    :param max_failure_ratio: the share of failed and invalid recipients tolerated (0 to 1).
    :param skip_on_reasons: API reasons (ints) that count a recipient as skipped, not failed.
    :param resend_unknown: send again, in a later try, to recipients whose delivery is unknown.
    :param progress_interval: seconds between progress lines in the task log.
    :param resend_confirmed: False (default): a cleared and re-run task never sends to a recipient
        that any earlier try of this task instance reached. True: each clear of the task starts a
        new ledger, so its re-run sends to every recipient again (a deliberate re-send); Airflow's
        retries within one clear still send only to the others.
    :param ledger_retention: how long the ledger is kept after the task's last try started (a
        ``timedelta`` of at least one day; default 30 days). Clearing the task later than that
        sends to everyone again.
    """

    template_fields: Sequence[str] = ("recipients", "template", "sender", "wa019_conn_id")
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        recipients: Any,
        body: str | None = None,
        template: str | None = None,
        variables: Sequence[Any] = (),
        header_type: int | None = None,
        header_link: str | None = None,
        sender: str | None = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        max_concurrency: int = 4,
        rate_per_second: float | None = None,
        max_failure_ratio: float = 0.0,
        skip_on_reasons: Collection[int] = DEFAULT_SKIP_REASONS,
        resend_unknown: bool = True,
        progress_interval: float = 5.0,
        resend_confirmed: bool = False,
        ledger_retention: timedelta = _BULK_LEDGER_RETENTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (body is None) == (template is None):
            raise ValueError("give exactly one of body (free-form text) and template (a template name)")
        if body is not None and (variables or header_type is not None or header_link is not None):
            raise ValueError("variables, header_type and header_link go with template, not with body")
        # Checked here, at DAG parse time, so a wrong type is a clear import error naming the
        # argument, not a TypeError (or an OverflowError mid-run, for an infinite rate) later.
        if not (_bulk_is_int(max_concurrency) and 1 <= max_concurrency <= _BULK_MAX_CONCURRENCY):
            raise ValueError(
                f"max_concurrency must be an int from 1 to {_BULK_MAX_CONCURRENCY}, got {max_concurrency!r}"
            )
        if rate_per_second is not None and not (_bulk_is_number(rate_per_second) and rate_per_second > 0):
            raise ValueError(
                f"rate_per_second must be a finite number > 0 (sends per second) or None, got {rate_per_second!r}"
            )
        if not (_bulk_is_number(max_failure_ratio) and 0 <= max_failure_ratio <= 1):
            raise ValueError(f"max_failure_ratio must be a number from 0 to 1, got {max_failure_ratio!r}")
        if not (_bulk_is_number(progress_interval) and progress_interval > 0):
            raise ValueError(
                f"progress_interval must be a finite number of seconds > 0, got {progress_interval!r}"
            )
        if not _bulk_is_reason_collection(skip_on_reasons):
            raise ValueError(
                f"skip_on_reasons must be a collection of API reason codes (ints), e.g. (7, 8), "
                f"got {skip_on_reasons!r}"
            )
        if not isinstance(resend_confirmed, bool):
            raise ValueError(f"resend_confirmed must be True or False, got {resend_confirmed!r}")
        if not (isinstance(ledger_retention, timedelta) and ledger_retention >= _BULK_MIN_LEDGER_RETENTION):
            raise ValueError(
                f"ledger_retention must be a timedelta of at least one day, got {ledger_retention!r}"
            )
        self.recipients = recipients
        self.body = body
        self.template = template
        self.variables = tuple(variables)
        self.header_type = header_type
        self.header_link = header_link
        self.sender = sender
        self.wa019_conn_id = wa019_conn_id
        self.max_concurrency = int(max_concurrency)
        self.rate_per_second = rate_per_second
        self.max_failure_ratio = float(max_failure_ratio)
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)
        self.resend_unknown = bool(resend_unknown)
        self.progress_interval = float(progress_interval)
        self.resend_confirmed = resend_confirmed
        self.ledger_retention = ledger_retention
        self._engine: Any = None

    def execute(self, context: Context) -> dict[str, Any]:
        import logging

        from airflow_provider_wa019.bulk import (
            BulkSender,
            LedgerStoreError,
            ProgressLedger,
            VariableLedgerStore,
            parse_recipients,
        )
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook

        # The async hook: the engine sends on an event loop (see bulk.engine for the threads).
        hook = WhatsAppAsyncHook(self.wa019_conn_id)
        # One line per message would flood the log: progress lines replace them.
        hook.message_log_level = logging.DEBUG
        try:
            # Read here, on the task's thread, with the sync lookup (a task SDK call); the hook's
            # sends on the event loop reuse these settings and never look the connection up.
            settings = hook.settings  # a broken connection fails here, before any send
        except WhatsAppError as err:
            raise task_outcome(err, (), log=self.log) from err
        try:
            recipients, duplicates = parse_recipients(self.recipients, region=settings.default_region)
        except ValueError as err:
            raise AirflowFailException(str(err)) from err

        try:
            prepare, send = self._message_functions(context, hook)
        except Exception as err:  # a template syntax error, a missing template file
            raise AirflowFailException(f"the message template cannot be used: {err}") from err

        try:
            store = VariableLedgerStore.for_task(
                context,
                resend_confirmed=self.resend_confirmed,
                retention=self.ledger_retention,
                log=self.log,
            )
            store.open()
        except LedgerStoreError as err:
            # Without a ledger this try could not record whom it reaches: send nothing.
            raise AirflowException(f"the bulk send's progress ledger cannot be written: {err}") from err
        self.log.info(
            "Progress ledger: Airflow Variables %s.* (%s), kept until %s",
            store.head_key,
            store.describe(),
            _bulk_utc(store.expires),
        )
        ledger = ProgressLedger(store)
        engine = BulkSender(
            send,
            prepare=prepare,
            ledger=ledger,
            max_concurrency=self.max_concurrency,
            rate_per_second=self.rate_per_second,
            skip_on_reasons=self.skip_on_reasons,
            resend_unknown=self.resend_unknown,
            log=self.log,
            # A template can quote any value it read, the connection's password included.
            secrets=(settings.token,),
            progress_seconds=self.progress_interval,
            # Long enough for a request in flight to get its answer or its read timeout.
            drain_seconds=sum(settings.timeout) + 5.0,
            # The hook's HTTP session lives on the engine's event loop: closed there.
            aclose=hook.close,
        )
        self._engine = engine
        self.log.info(
            "Bulk send to %d recipient(s), at most %d in flight%s",
            len(recipients),
            self.max_concurrency,
            f", {self.rate_per_second:g}/s" if self.rate_per_second else "",
        )
        try:
            report = engine.run(recipients, duplicates=duplicates)
        finally:
            self._engine = None
        store.close(ledger.chunks)  # chunk count noted, expired ledgers deleted; never raises
        # The report holds what XCom needs: free the parsed list and the ledger's state (one entry
        # per recipient each) before the push, which holds the results two or three times over.
        del recipients, engine, ledger

        summary = report.summary()
        self.log.info(
            "Bulk send done: %s; this try sent %d in %.1f s (%d ledger write(s))",
            _bulk_summary_text(summary),
            report.sent_now,
            report.elapsed,
            report.ledger_writes,
        )
        ending = self._bulk_ending(report, summary)
        if self.do_xcom_push:
            ti = context["ti"]
            results = report.results_xcom()
            report.results = {}  # the outcomes are in ``results`` now (summary and ending are made)
            ti.xcom_push(key="results", value=results)
            del results
            if ending is not None:
                # A failed or skipped task pushes no return value itself: the summary still helps.
                ti.xcom_push(key="return_value", value=summary)
        if ending is not None:
            raise ending
        return summary

    def on_kill(self) -> None:
        # Called on SIGTERM (and after Airflow's timeout): stop starting sends; the running
        # execute() waits for those in flight, writes the ledger and ends the try.
        engine = self._engine
        if engine is not None:
            engine.stop()

    def _message_functions(self, context: Context, hook: Any) -> tuple[Any, Any]:
        """``prepare(recipient)`` (on this thread: renders with the task context) and
        ``send(number, payload)`` (a coroutine function, awaited on the engine's event loop: the
        async hook's send)."""
        env = self.get_template_env()
        base = dict(context)
        sender = self.sender  # read once: the loop thread never touches the operator

        def compile_text(text: Any, *, file_ok: bool = False) -> Any:
            if not isinstance(text, str):
                return None
            if file_ok and text.endswith(_BULK_BODY_FILE_EXT):
                return env.get_template(text)
            return env.from_string(text)

        if self.body is not None:
            body = compile_text(self.body, file_ok=True)
            if body is None:
                raise AirflowFailException(f"body must be text, got {type(self.body).__name__}")

            def prepare_body(recipient: Any) -> str:
                return body.render({**base, **recipient.values})

            async def send_body(number: str, text: str) -> Any:
                return await hook.send_message(number, text, sender=sender)

            return prepare_body, send_body

        compiled = [(compile_text(v), v) for v in self.variables]
        link = compile_text(self.header_link)

        def prepare_template(recipient: Any) -> tuple[list[Any], str | None]:
            names = {**base, **recipient.values}
            values = [tpl.render(names) if tpl is not None else raw for tpl, raw in compiled]
            return values, link.render(names) if link is not None else self.header_link

        template, header_type = self.template, self.header_type

        async def send_template(number: str, payload: tuple[list[Any], str | None]) -> Any:
            values, header_link = payload
            return await hook.send_template(
                number, template, values, header_type=header_type, header_link=header_link, sender=sender
            )

        return prepare_template, send_template

    def _bulk_ending(self, report: Any, summary: dict[str, Any]) -> Exception | None:
        """The exception that ends the task, or None for success (see the class docstring)."""
        text = _bulk_summary_text(summary)

        def retry(why: str) -> Exception:
            # Safe to retry: the ledger holds every confirmed recipient of this try.
            return AirflowException(
                f"{why} ({text}); the next try sends only to recipients not yet confirmed"
            )

        if report.stopped:
            return retry("bulk send stopped before the end")
        if report.aborted and not report.abort_retryable:
            return AirflowFailException(f"bulk send stopped: {report.aborted} ({text})")
        retryable = report.retryable_now()
        if report.aborted:
            return retry(f"bulk send stopped: {report.aborted}")
        if retryable:
            return retry(
                f"{retryable} recipient(s) got reason 6, could not reach the API or have an unknown delivery"
            )
        ratio = report.failure_ratio()
        if ratio > self.max_failure_ratio:
            return AirflowFailException(
                f"{ratio:.1%} of recipients failed or were invalid, more than max_failure_ratio "
                f"{self.max_failure_ratio:.1%} ({text})"
            )
        unknown = report.unknown_now()
        if unknown:
            return AirflowFailException(
                f"{unknown} answer(s) were not the API's JSON: delivery unknown, not retried ({text})"
            )
        if summary["total"] and sum(summary["skipped"].values()) == summary["total"]:
            message = f"every recipient was skipped ({text}): send an approved template to reach them"
            self.log.warning("%s", message)
            return AirflowSkipException(message)
        return None


def _bulk_utc(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _bulk_summary_text(summary: dict[str, Any]) -> str:
    parts = [f"{summary['sent']}/{summary['total']} sent"]
    for status in ("skipped", "failed"):
        if summary[status]:
            detail = ", ".join(f"{key}: {n}" for key, n in summary[status].items())
            parts.append(f"{status} {sum(summary[status].values())} ({detail})")
    for status in ("invalid", "unknown"):
        if summary[status]:
            parts.append(f"{summary[status]} {status}")
    return ", ".join(parts)
