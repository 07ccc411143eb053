"""Keeping secrets and phone numbers out of what the provider writes (logs, errors, XCom).

Pure Python, no Airflow: the hook, the operators and the notifier all use it.
"""

from __future__ import annotations

import re

__all__ = ["SecretRedactor", "mask_number", "scrub"]

_HEX = "0123456789abcdefABCDEF"


def _spellings(ch: str) -> list[bytes]:
    """Every way ``ch`` can appear in an answer's raw bytes: itself (UTF-8 and Latin-1), as a JSON
    escape (``\\u002f``, any hex case; ``\\/`` for a slash, as PHP's json_encode writes it) and as
    a percent-escape (``%2F``, any case)."""
    code = ord(ch)
    out = {ch.encode("utf-8")}
    if code < 256:
        out.add(bytes([code]))
    if ch == "/":
        out.add(b"\\/")
    options = [re.escape(s) for s in sorted(out)]
    if code < 0x10000:
        options.append(b"\\\\u" + b"".join(_case_free(c) for c in f"{code:04x}"))
    if code < 128:
        options.append(b"%" + b"".join(_case_free(c) for c in f"{code:02x}"))
    return options


def _case_free(hex_digit: str) -> bytes:
    if hex_digit in "0123456789":
        return hex_digit.encode()
    return f"[{hex_digit.lower()}{hex_digit.upper()}]".encode()


def _base64_cores(secret: bytes) -> list[bytes]:
    """The parts of ``secret``'s base64 (standard and URL-safe) that are the same wherever it
    sits in a longer base64 text (``base64("Bearer " + token)``): one per alignment, without the
    characters that also depend on its neighbours."""
    import base64

    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret)
        # Characters fully inside the secret's bits: from the first whole 6-bit group after the
        # offset to the last one before the end (or padding).
        start = -(-offset * 8 // 6)  # ceil(offset * 8 / 6)
        end = (offset + len(secret)) * 8 // 6
        core = encoded[start:end]
        if len(core) >= 8:  # shorter could match unrelated base64 text
            cores.add(core)
            cores.add(core.replace(b"+", b"-").replace(b"/", b"_"))
    return sorted(cores)


class SecretRedactor:
    """Blanks one secret (the API token) in bytes and text, in every spelling an echo can take.

    An answer that echoes the ``Authorization`` header (a gateway's debug page, a "bad request"
    quoting it) would carry the token into errors, logs and XCom. The raw bytes are blanked in
    any JSON- or percent-escaped spelling, and inside base64 text (an echoed Basic or Bearer
    header, encoded), before they are decoded, and every decoded string again afterwards
    (:meth:`text`).
    """

    MASK = "***"

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("nothing to redact")
        self._secret = secret
        escaped = b"".join(b"(?:" + b"|".join(_spellings(c)) + b")" for c in secret)
        cores = _base64_cores(secret.encode("utf-8"))
        self._raw = re.compile(b"|".join([escaped, *(re.escape(core) for core in cores)]))
        self._text_cores = [core.decode() for core in cores]

    def __repr__(self) -> str:
        return "<SecretRedactor ***>"

    def bytes(self, data: bytes) -> bytes:
        """``data`` with the secret blanked in any raw, JSON-escaped or percent-escaped spelling,
        and inside base64 text."""
        return self._raw.sub(self.MASK.encode(), data)

    def text(self, value: str) -> str:
        """``value`` with the secret blanked, as is or inside base64 text (a decoded string:
        escapes are already resolved)."""
        if self._secret in value:
            value = value.replace(self._secret, self.MASK)
        for core in self._text_cores:
            if core in value:
                value = value.replace(core, self.MASK)
        return value


def mask_number(number: str) -> str:
    """A number for log lines: everything but the last 4 digits hidden."""
    return "*" * max(len(number) - 4, 0) + number[-4:]


# A run of digits as people write numbers: "+972 50-123-4567", "972501234567", "(050) 123.4567".
_NUMBER_LIKE = re.compile(r"\+?\d[\d\s\-().]{4,}\d")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_NOT_DIGIT = re.compile(r"\D")


def scrub(text: str) -> str:
    """``text`` with every phone-number-like run (8 or more digits) masked to its last 4 digits.

    Error texts quote the value they refused (``invalid to '050-123-456': ...``) and the API's
    messages may quote the recipient: neither reaches the task log in full.
    """

    def mask(match: re.Match[str]) -> str:
        digits = _NOT_DIGIT.sub("", match.group(0))
        if len(digits) < 8 or _IPV4.fullmatch(match.group(0)):
            return match.group(0)  # a short number, an address: not a phone number
        return mask_number(digits)

    return _NUMBER_LIKE.sub(mask, text)
