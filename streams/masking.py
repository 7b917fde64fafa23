"""Keyed masking of customer meter ids in alerts and logs, and secrets kept out of logs
(docs/security.md).

A customer meter id names a household; alerts and logs leave the utility's data scope (duty
webhook, log shipping), so with a mask key set every customer meter id in them is replaced by
``m-`` + the first 16 hex digits of HMAC-SHA256(key, id): stable for a key, so one meter's
alerts and log lines still line up, and reversible only by whoever holds the key and the meter
list (re-hash the list and compare). Without a key ids are shown as they are.

>>> mask = MeterMask(b"k" * 32)
>>> mask.meter("A0001-M0042")
'm-c4790f41c2ee1f0d'
>>> mask.meter("A0001-M0042") == mask.meter("A0001-M0042"), mask.meter("A0001-M0043")
(True, 'm-3a79d42845fe2e7b')
>>> MeterMask(None).meter("A0001-M0042"), MeterMask(None).enabled
('A0001-M0042', False)

Log lines: the filter replaces the meter ids the mask was told about (``remember``: the worker
registers every customer meter of the topology) and, optionally, any token matching an id
``pattern`` (the contracts' MeterId pattern admits any word, so there is no safe default):

>>> mask.remember("A0001-M0042")
>>> mask.text("meter A0001-M0042: register rollback (area A0001)")
'meter m-c4790f41c2ee1f0d: register rollback (area A0001)'
>>> MeterMask(b"k" * 32, pattern=r"A\\d{4}-M\\d{4}").text("A0009-M0001,A0009-M0002.")
'm-f155d42cda00ae11,m-5fc1d3b5826bb971.'

Secrets (the SASL password, the mask key) are registered with ``redact_in_logs`` by whoever
hands them out: from then on every log record of the process has them replaced, and SASL
authentication payloads too (aiokafka and kafka-python log the PLAIN password inside them at
DEBUG level).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

PREFIX = "m-"
DIGEST_CHARS = 16  # 64 bits: no collision in practice among a utility's few million meters
MIN_KEY_BYTES = 16
# A token as far as a meter id can reach: contracts.MeterId's character set.
_TOKEN = re.compile(r"[A-Za-z0-9_.:\-]+")


class MaskConfigError(ValueError):
    """The mask key settings are unusable; the message names the variables, never the key."""


class MeterMask:
    """``meter(id)`` for alert fields, ``text(s)`` for free text, ``log_filter()`` for logs."""

    def __init__(
        self,
        key: bytes | None,
        *,
        pattern: str | re.Pattern[str] | None = None,
        known: Iterable[str] = (),
    ) -> None:
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise MaskConfigError(f"the mask key is shorter than {MIN_KEY_BYTES} bytes")
        self._key = key
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self._known: set[str] = set()
        self._cache: dict[str, str] = {}
        self.remember(*known)

    @classmethod
    def from_settings(cls, settings: Settings, *, pattern: str | re.Pattern[str] | None = None) -> MeterMask:
        """The key from GRIDWATCH_MASK_KEY or the file GRIDWATCH_MASK_KEY_FILE (one of them, at
        least 16 bytes; whitespace around a file's content is not part of it); none: no masking."""
        if settings.mask_key is not None and settings.mask_key_file is not None:
            raise MaskConfigError("set GRIDWATCH_MASK_KEY or GRIDWATCH_MASK_KEY_FILE, not both")
        key: bytes | None = None
        if settings.mask_key_file is not None:
            try:
                key = Path(settings.mask_key_file).read_bytes().strip()
            except OSError as exc:
                raise MaskConfigError(
                    f"cannot read GRIDWATCH_MASK_KEY_FILE {settings.mask_key_file}: {exc.strerror}"
                ) from None
        elif settings.mask_key is not None:
            key = settings.mask_key.get_secret_value().strip().encode()
        if key:
            redact_in_logs(key.decode(errors="replace"))
        return cls(key, pattern=pattern)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never the key
        return f"MeterMask(enabled={self.enabled}, known={len(self._known)})"

    def meter(self, meter_id: str) -> str:
        """The masked form of one meter id (the id itself when masking is off)."""
        if self._key is None:
            return meter_id
        masked = self._cache.get(meter_id)
        if masked is None:
            digest = hmac.new(self._key, meter_id.encode(), hashlib.sha256).hexdigest()
            masked = PREFIX + digest[:DIGEST_CHARS]
            if len(self._cache) < 1_000_000:
                self._cache[meter_id] = masked
        return masked

    def remember(self, *meter_ids: str) -> None:
        """Register customer meter ids that ``text`` and the log filter must mask."""
        if self._key is not None:
            self._known.update(meter_ids)

    def forget(self, *meter_ids: str) -> None:
        self._known.difference_update(meter_ids)

    def text(self, s: str) -> str:
        """``s`` with every remembered or pattern-matching meter id masked.

        A token is a run of meter-id characters; one that is not an id as a whole is also
        tried without trailing ``.``/``:``/``-`` and split at ``:`` (``topic:A0001-M0042``).
        """
        if self._key is None or (not self._known and self._pattern is None):
            return s
        return _TOKEN.sub(self._mask_token, s)

    def _is_id(self, token: str) -> bool:
        if token in self._known:
            return True
        return self._pattern is not None and self._pattern.fullmatch(token) is not None

    def _mask_token(self, m: re.Match[str]) -> str:
        return self._mask_word(m.group(0))

    def _mask_word(self, token: str) -> str:
        if self._is_id(token):
            return self.meter(token)
        stripped = token.rstrip(".:-")
        if stripped and stripped != token and self._is_id(stripped):
            return self.meter(stripped) + token[len(stripped) :]
        if ":" in token:
            return ":".join(self._mask_word(part) if part else part for part in token.split(":"))
        return token

    def log_filter(self) -> MeterMaskFilter:
        return MeterMaskFilter(self)

    def install(self) -> Callable[..., logging.LogRecord]:
        """Mask every log record of this process, whatever logger or handler it goes through
        (Faust sets up its handlers after we start): wraps the log record factory. Returns the
        previous factory, for ``logging.setLogRecordFactory`` to undo it."""
        previous = logging.getLogRecordFactory()
        flt = self.log_filter()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            flt.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        return previous


class MeterMaskFilter(logging.Filter):
    """Rewrites a record's message (arguments merged in) and its traceback text with the
    meter ids masked; never drops a record. Attach it to handlers (a logger's own filters do
    not see records propagated from child loggers), or use ``MeterMask.install()``.

    >>> mask = MeterMask(b"k" * 32, known=["A0001-M0042"])
    >>> record = logging.LogRecord(
    ...     "gridwatch", logging.INFO, __file__, 1, "meter %s: %s", ("A0001-M0042", 3), None
    ... )
    >>> MeterMaskFilter(mask).filter(record), record.getMessage()
    (True, 'meter m-c4790f41c2ee1f0d: 3')
    """

    def __init__(self, mask: MeterMask) -> None:
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.mask.enabled or getattr(record, "_gridwatch_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as usual
            return True
        masked = self.mask.text(message)
        if masked != message:
            record.msg, record.args = masked, None
        _clean_traceback(record, self.mask.text)
        if record.stack_info:
            record.stack_info = self.mask.text(record.stack_info)
        setattr(record, "_gridwatch_masked", True)  # noqa: B010 (no such LogRecord attribute)
        return True


def _clean_traceback(record: logging.LogRecord, clean: Callable[[str], str]) -> None:
    """Clean a record's traceback text; a traceback is formatted here only when that changes it
    (otherwise the handler's own formatter still renders it)."""
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if clean(text) != text:
            record.exc_text = text
    if record.exc_text:
        record.exc_text = clean(record.exc_text)


# ---- secrets out of logs ------------------------------------------------------------------------

REDACTED = "**********"
MIN_SECRET_CHARS = 4
# aiokafka: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\x00user\x00password'); kafka-python:
# SaslAuthenticateRequest(version=2, auth_bytes=b'user\x00user\x00password'); PLAIN sends the
# password in clear there (inside TLS). SCRAM payloads hold no password but are redacted alike.
_AUTH_BYTES = re.compile(r"""((?:sasl_)?auth_bytes=)b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


class SecretFilter(logging.Filter):
    """Replaces registered secret values, and SASL authentication payloads, in log records.

    >>> guard = SecretFilter()
    >>> guard.add("s3cr3t-pw")
    >>> guard.redact("login failed for u with s3cr3t-pw")
    'login failed for u with **********'
    >>> guard.redact("Request 3: SaslAuthenticateRequest(version=2, auth_bytes=b'u\\x00u\\x00other')")
    'Request 3: SaslAuthenticateRequest(version=2, auth_bytes=**********)'
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        """Register a secret, with the escaped forms a repr of it (str or bytes) would log."""
        forms = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
        # Shorter ones would blank out ordinary words; SASL payloads are redacted regardless.
        self._secrets |= {f for f in forms if len(f) >= MIN_SECRET_CHARS}

    def redact(self, text: str) -> str:
        if "auth_bytes=" in text:
            text = _AUTH_BYTES.sub(lambda m: m.group(1) + REDACTED, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as usual
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        _clean_traceback(record, self.redact)
        return True


SECRETS = SecretFilter()
_install_lock = threading.Lock()
_installed = False


def redact_in_logs(*secrets: str) -> None:
    """Keep ``secrets`` out of every log record this process creates from now on, whatever the
    logger, level or handler (the log record factory is wrapped once, on the first call)."""
    global _installed
    for secret in secrets:
        SECRETS.add(secret)
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            SECRETS.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
