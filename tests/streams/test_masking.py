"""Customer meter ids masked with a keyed hash in alerts and logs; secrets kept out of logs."""

from __future__ import annotations

import doctest
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streams.masking
from streams.contracts import MeterId
from streams.masking import (
    MaskConfigError,
    MeterMask,
    MeterMaskFilter,
    SecretFilter,
    redact_in_logs,
)
from streams.settings import Settings

KEY = b"0123456789abcdef-test-key"
METER = "A0001-M0042"


def _settings(**values: object) -> Settings:
    return Settings.model_validate(values)


@pytest.fixture
def mask() -> MeterMask:
    return MeterMask(KEY, known=[METER, "A0001-M0043"])


@pytest.fixture
def record_factory() -> Iterator[None]:
    """Restore the log record factory a test wraps (the process-wide secrets guard, installed
    once, must stay in the chain: install it before taking the snapshot)."""
    redact_in_logs()
    previous = logging.getLogRecordFactory()
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def test_module_doctests() -> None:
    """streams/ is outside pytest's testpaths, so its examples run here."""
    result = doctest.testmod(streams.masking)
    assert result.attempted >= 8 and result.failed == 0


# ---- meter() -----------------------------------------------------------------------------------


def test_masked_id_is_keyed_stable_and_short(mask: MeterMask) -> None:
    masked = mask.meter(METER)
    assert masked.startswith("m-") and len(masked) == 18 and METER not in masked
    assert masked == MeterMask(KEY).meter(METER)  # stable for the key, across instances
    assert masked != MeterMask(KEY + b"2").meter(METER)  # another key, another pseudonym
    assert masked != mask.meter("A0001-M0043")
    assert msgspec.convert(masked, MeterId) == masked  # still a valid Alert.entity_id


@given(st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True))
def test_every_valid_meter_id_masks_to_a_valid_meter_id(meter_id: str) -> None:
    masked = MeterMask(KEY).meter(meter_id)
    assert msgspec.convert(masked, MeterId) == masked
    assert MeterMask(None).meter(meter_id) == meter_id


def test_no_key_no_masking() -> None:
    plain = MeterMask.from_settings(_settings())
    assert not plain.enabled
    assert plain.meter(METER) == METER
    plain.remember(METER)
    assert plain.text(f"meter {METER}") == f"meter {METER}"


# ---- the key: env or file, never shown ----------------------------------------------------------


def test_key_from_env_or_file(tmp_path: Path) -> None:
    from_env = MeterMask.from_settings(_settings(mask_key=KEY.decode()))
    key_file = tmp_path / "mask.key"
    key_file.write_bytes(KEY + b"\n")  # an editor's final newline is not part of the key
    from_file = MeterMask.from_settings(_settings(mask_key_file=key_file))
    assert from_env.enabled and from_file.enabled
    assert from_env.meter(METER) == from_file.meter(METER) == MeterMask(KEY).meter(METER)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"mask_key": KEY.decode(), "mask_key_file": "/etc/hostname"}, "not both"),
        ({"mask_key": "short"}, "shorter than 16 bytes"),
        ({"mask_key_file": "/nonexistent/mask.key"}, "cannot read GRIDWATCH_MASK_KEY_FILE"),
    ],
)
def test_unusable_keys_are_refused_without_showing_them(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(MaskConfigError, match=complaint) as err:
        MeterMask.from_settings(_settings(**values))
    assert KEY.decode() not in str(err.value) and "short" not in str(err.value).replace("shorter", "")


def test_the_key_is_never_in_reprs_nor_logs(caplog: pytest.LogCaptureFixture) -> None:
    key = "mask-key-" + secrets.token_hex(12)
    s = _settings(mask_key=key)
    mask = MeterMask.from_settings(s)
    assert key not in repr(mask) and key not in repr(s) and key not in str(s)
    caplog.set_level(logging.INFO)
    logging.getLogger("gridwatch.test").info("careless: %s", key)  # from_settings registered it
    assert key not in caplog.text and "careless: **********" in caplog.text


# ---- text() ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "meter {id}: register rollback",
        "meter_id={id}, area A0001",
        "alert 'meter_zero_consumption' for '{id}'",
        '{{"meter_id": "{id}", "area_id": "A0001"}}',
        "readings of ['{id}', '{id}'] dropped",
        "gridwatch.readings:{id} late.",
        "ended with {id}.",
    ],
)
def test_text_masks_known_ids_wherever_they_stand(mask: MeterMask, template: str) -> None:
    masked = mask.text(template.format(id=METER))
    assert METER not in masked
    assert masked == template.format(id=mask.meter(METER))


def test_text_leaves_everything_else_alone(mask: MeterMask) -> None:
    for text in (
        "area A0001 high loss 12.5% at 2026-01-01T00:15:00Z",
        "A0001-M00420 is another meter",  # a longer id is not the known one
        "XA0001-M0042",
        "http://127.0.0.1:9308/metrics",
        "",
    ):
        assert mask.text(text) == text
    mask.forget(METER)
    assert mask.text(f"meter {METER}") == f"meter {METER}"


def test_a_pattern_masks_ids_never_remembered() -> None:
    mask = MeterMask(KEY, pattern=r"A\d{4}-M\d{4}")
    assert mask.text("A0009-M0001 and A0009-S") == f"{mask.meter('A0009-M0001')} and A0009-S"


# ---- log records -------------------------------------------------------------------------------


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad register for {METER}")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("gridwatch", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_filter_masks_message_arguments_and_traceback(mask: MeterMask) -> None:
    record = _record("meter %s in area %s: %d kWh", METER, "A0001", 3, exc=True)
    assert MeterMaskFilter(mask).filter(record) is True  # masks, never drops
    assert record.getMessage() == f"meter {mask.meter(METER)} in area A0001: 3 kWh"
    assert record.exc_text is not None and METER not in record.exc_text
    assert f"ValueError: bad register for {mask.meter(METER)}" in record.exc_text
    assert METER not in logging.Formatter().format(record)


def test_a_traceback_without_ids_is_left_to_the_handler_formatter(mask: MeterMask) -> None:
    try:
        raise ValueError("nothing personal")
    except ValueError:
        import sys

        record = logging.LogRecord("gridwatch", logging.ERROR, __file__, 1, "x", None, sys.exc_info())
    MeterMaskFilter(mask).filter(record)
    SecretFilter().filter(record)
    assert record.exc_text is None


def test_filter_without_a_key_changes_nothing() -> None:
    record = _record("meter %s", METER)
    assert MeterMaskFilter(MeterMask(None, known=[METER])).filter(record)
    assert record.args == (METER,) and record.getMessage() == f"meter {METER}"


def test_filter_on_a_handler_sees_every_logger(mask: MeterMask, tmp_path: Path) -> None:
    """A handler filter applies to records propagated from child loggers (a logger's does not)."""
    path = tmp_path / "worker.log"
    handler = logging.FileHandler(path)
    handler.addFilter(mask.log_filter())
    parent = logging.getLogger("gwmask")
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    try:
        logging.getLogger("gwmask.detect").info("meter %s flat line", METER)
        logging.getLogger("gwmask").warning("closing %s:", "A0001-M0043")
    finally:
        parent.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert METER not in text and "A0001-M0043" not in text
    assert mask.meter(METER) in text and mask.meter("A0001-M0043") in text


def test_install_masks_every_record_of_the_process(
    mask: MeterMask, record_factory: None, caplog: pytest.LogCaptureFixture
) -> None:
    mask.install()
    caplog.set_level(logging.INFO)
    logging.getLogger("faust.somewhere").info("meter %s", METER)
    logging.getLogger().error("meter %s", METER)
    assert METER not in caplog.text
    assert caplog.text.count(mask.meter(METER)) == 2


def test_a_malformed_log_call_is_left_to_the_handler(mask: MeterMask) -> None:
    record = _record("meter %s %s", METER)  # one argument short
    assert MeterMaskFilter(mask).filter(record)
    with pytest.raises(TypeError):
        record.getMessage()


# ---- secrets out of logs -----------------------------------------------------------------------


def test_secret_filter_redacts_escaped_forms_and_sasl_payloads() -> None:
    guard = SecretFilter()
    guard.add("p'w\\d")
    assert guard.redact("str p'w\\d") == "str **********"
    assert guard.redact(f"repr {'p' + chr(39) + 'w' + chr(92) + 'd'!r}") == 'repr "**********"'
    assert guard.redact(repr(b"x\x00p'w\\d")) == 'b"x\\x00**********"'
    aiokafka = "Request 3: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00u\\x00secret')"
    assert guard.redact(aiokafka) == "Request 3: SaslAuthenticateRequest_v1(sasl_auth_bytes=**********)"
    kafka_python = 'Request 3: SaslAuthenticateRequest(v=2, auth_bytes=b"u\\x00u\\x00it\'s")'
    assert guard.redact(kafka_python) == "Request 3: SaslAuthenticateRequest(v=2, auth_bytes=**********)"
    assert guard.redact("nothing secret here") == "nothing secret here"
    guard.add("ab")  # too short to tell from ordinary text: left to the SASL payload rule
    assert guard.redact("abc") == "abc"


def test_redact_in_logs_covers_every_logger_and_installs_once(caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-" + secrets.token_urlsafe(16)
    redact_in_logs(secret)
    factory = logging.getLogRecordFactory()
    redact_in_logs(secret)
    assert logging.getLogRecordFactory() is factory
    caplog.set_level(logging.DEBUG)
    logging.getLogger("aiokafka.conn").debug("auth with %s", secret)
    try:
        raise RuntimeError(f"login failed: {secret}")
    except RuntimeError:
        logging.getLogger("kafka").exception("boom")
    assert secret not in caplog.text
    assert "auth with **********" in caplog.text and "login failed: **********" in caplog.text


def test_worker_alerts_carry_the_masked_meter_id() -> None:
    from streams.detection_stage import masked_alert

    mask = MeterMask(b"k" * 32)
    rec = {"id": "meter:A1-M7:zero:900", "entity_kind": "meter", "entity_id": "A1-M7", "type": "x"}
    out = masked_alert(rec, mask)
    assert out["entity_id"] == mask.meter("A1-M7") != "A1-M7"
    assert out["id"] == f"meter:{mask.meter('A1-M7')}:zero:900"
    assert "A1-M7" not in str(out)
    area = {"id": "area:A1:high_loss:900", "entity_kind": "area", "entity_id": "A1", "type": "y"}
    assert masked_alert(area, mask) == area
    assert masked_alert(rec, MeterMask(None)) == rec
