"""Kafka over SASL_SSL against a real broker with TLS and SASL (SCRAM-SHA-256/512 and PLAIN):
the certificates are made here with the JDK's keytool (a CA, a broker certificate for
127.0.0.1/localhost); the right credentials work for kafka-python, aiokafka and a gridwatch
worker, wrong ones, PLAINTEXT and an untrusted CA do not, and the password shows nowhere."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka.errors import KafkaError
from pydantic import SecretStr
from worker_env import settings_for, worker_env

from local.kafka import DEFAULT_VERSION, BrokerSecurity, LocalKafka, _tool
from local.run import WorkerProcess
from simulator.city import CitySpec, aligned_start, build, messages
from streams.kafkaio import (
    KafkaConfigError,
    KafkaUnavailable,
    create_topics,
    faust_broker_kwargs,
    kafka_client_kwargs,
    produce,
    read_topic,
    sasl_password,
    security_kwargs,
)
from streams.settings import Settings
from streams.topics import TopicSpec, topic_specs

USER = "gridwatch-test"
FAIL_FAST = {"bootstrap_timeout_ms": 4000}  # kafka-python retries a refused bootstrap for 30 s


# ---- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_pem: Path  # what clients (and the broker, for itself) trust
    keystore: Path  # the broker's key and certificate chain, PKCS12
    store_password: str = field(repr=False)


def _keytool() -> str:
    """keytool ships beside java (the broker's JDK/JRE)."""
    beside = Path(os.path.realpath(_tool("java"))).parent / "keytool"
    found = str(beside) if beside.is_file() else shutil.which("keytool")
    if not found:
        pytest.skip("keytool not found next to java nor on PATH")
    return found


def make_pki(d: Path) -> Pki:
    """A throwaway CA and a broker certificate it signed, SAN localhost and 127.0.0.1; EC keys
    (fast to make), valid 2 days. Store passwords go through the environment, not argv."""
    kt = _keytool()
    pw = secrets.token_urlsafe(18)
    env = {**os.environ, "GW_STOREPASS": pw}
    ca, broker = d / "ca.p12", d / "broker.p12"
    ca_pem, csr, cert = d / "ca.pem", d / "broker.csr", d / "broker.pem"
    common = ["-storepass:env", "GW_STOREPASS"]
    key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", "2", "-storetype", "PKCS12"]
    steps = [
        ["-genkeypair", "-alias", "ca", "-dname", "CN=gridwatch-test-ca", "-ext", "bc:c", *key,
         "-keystore", ca, "-keypass:env", "GW_STOREPASS"],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", ca_pem],
        ["-genkeypair", "-alias", "broker", "-dname", "CN=localhost", *key, "-keystore", broker,
         "-keypass:env", "GW_STOREPASS"],
        ["-certreq", "-alias", "broker", "-keystore", broker, "-file", csr],
        ["-gencert", "-rfc", "-alias", "ca", "-keystore", ca, "-infile", csr, "-outfile", cert,
         "-validity", "2", "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-ext", "KU=digitalSignature",
         "-ext", "EKU=serverAuth"],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", ca_pem, "-keystore", broker],
        ["-importcert", "-alias", "broker", "-file", cert, "-keystore", broker],
    ]
    for step in steps:
        proc = subprocess.run(
            [kt, *map(str, step), *common], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 0, f"keytool {step[0]} failed:\n{proc.stdout}{proc.stderr}"
    return Pki(ca_pem, broker, pw)


# ---- the secured broker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Secured:
    broker: LocalKafka
    pki: Pki
    password: str = field(repr=False)

    def env(self, mechanism: str = "SCRAM-SHA-256", password: str | None = None) -> dict[str, str]:
        """GRIDWATCH_* security variables of a client of this broker."""
        return {
            "GRIDWATCH_BOOTSTRAP": self.broker.bootstrap,
            "GRIDWATCH_SECURITY_PROTOCOL": "SASL_SSL",
            "GRIDWATCH_SASL_MECHANISM": mechanism,
            "GRIDWATCH_SASL_USERNAME": USER,
            "GRIDWATCH_SASL_PASSWORD": self.password if password is None else password,
            "GRIDWATCH_SSL_CAFILE": str(self.pki.ca_pem),
        }

    def settings(self, mechanism: str = "SCRAM-SHA-256", password: str | None = None) -> Settings:
        return settings_for(self.env(mechanism, password))

    def log_mark(self) -> int:
        return self.broker.log_file.stat().st_size

    def log_since(self, mark: int) -> str:
        with open(self.broker.log_file, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One SASL_SSL broker on free ports for the module (PLAIN, SCRAM-SHA-256 and -512)."""
    d = tmp_path_factory.mktemp("secure-kafka")
    pki = make_pki(d)
    password = secrets.token_urlsafe(24)
    security = BrokerSecurity(
        keystore=pki.keystore,
        keystore_password=pki.store_password,
        truststore=pki.ca_pem,
        truststore_type="PEM",
        username=USER,
        password=password,
    )
    version = os.environ.get("GRIDWATCH_KAFKA_VERSION", DEFAULT_VERSION)
    broker = LocalKafka.start(d / "kafka", version=version, security=security)
    try:
        yield Secured(broker, pki, password)
    finally:
        broker.stop()


def _topic(tag: str) -> str:
    return f"sec-{tag}-{uuid.uuid4().hex[:8]}"


# ---- clients -----------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_round_trip_over_sasl_ssl(secured: Secured, mechanism: str) -> None:
    s = secured.settings(mechanism)
    kw = security_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == mechanism
    topic = _topic(mechanism.lower())
    assert create_topics(s.bootstrap, [TopicSpec(topic, 2)], **kw) == [topic]
    sent = [(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]
    assert produce(s.bootstrap, sent, **kw) == 20
    got = {(r.key, r.value) for r in read_topic(s.bootstrap, topic, idle_s=0.5, **kw)}
    assert got == {(k, v) for _, k, v in sent}


@pytest.mark.kafka
def test_aiokafka_round_trip_with_client_kwargs(secured: Secured) -> None:
    """What the worker's own aiokafka consumers and `gridwatch notify` use."""
    s = secured.settings("SCRAM-SHA-512")
    topic = _topic("aio")
    create_topics(s.bootstrap, [TopicSpec(topic, 1)], **security_kwargs(s))

    async def round_trip() -> list[bytes]:
        producer = AIOKafkaProducer(acks="all", **kafka_client_kwargs(s))
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"over-tls")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, group_id=None, auto_offset_reset="earliest", **kafka_client_kwargs(s)
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            return [r.value for records in batch.values() for r in records]
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == [b"over-tls"]


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_is_refused(
    secured: Secured, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = secured.settings(mechanism, password="not-" + secured.password)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="kafka")  # CLI tests quieten it for the whole process
    mark = secured.log_mark()
    with pytest.raises((KafkaUnavailable, KafkaError)):
        produce(wrong.bootstrap, [(_topic("x"), b"k", b"v")], **security_kwargs(wrong), **FAIL_FAST)
    # refused by the broker, not unreachable (kafka-python only sees the connection close)
    refusals = [line for line in secured.log_since(mark).splitlines() if "Failed authentication" in line]
    assert refusals and all("Authentication failed" in line for line in refusals), refusals

    async def aio() -> None:
        producer = AIOKafkaProducer(**kafka_client_kwargs(wrong))
        try:
            await producer.start()
        finally:
            await producer.stop()

    caplog.clear()
    with pytest.raises(AIOKafkaError):
        asyncio.run(aio())
    assert "SaslAuthenticationFailed" in caplog.text
    assert wrong.sasl_password is not None
    assert wrong.sasl_password.get_secret_value() not in caplog.text
    assert secured.password not in caplog.text


@pytest.mark.kafka
def test_plaintext_to_the_tls_port_fails(secured: Secured) -> None:
    plain = secured.settings().model_copy(update={"security_protocol": "PLAINTEXT"})
    assert kafka_client_kwargs(plain) == {"bootstrap_servers": secured.broker.bootstrap}
    mark = secured.log_mark()
    with pytest.raises((KafkaUnavailable, KafkaError)):
        produce(plain.bootstrap, [(_topic("x"), b"k", b"v")], **FAIL_FAST)
    assert "(SSL handshake failed)" in secured.log_since(mark)

    async def aio() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=plain.bootstrap)
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(AIOKafkaError):
        asyncio.run(aio())


@pytest.mark.kafka
def test_a_broker_outside_the_trusted_ca_is_refused(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    """Without GRIDWATCH_SSL_CAFILE the system's CAs apply, and they never signed the test CA."""
    env = secured.env()
    del env["GRIDWATCH_SSL_CAFILE"]
    s = settings_for(env)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="kafka")  # CLI tests quieten it for the whole process
    with pytest.raises((KafkaUnavailable, KafkaError)):
        produce(s.bootstrap, [(_topic("x"), b"k", b"v")], **security_kwargs(s), **FAIL_FAST)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_clients_at_debug_level_never_log_the_password(
    secured: Secured, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both client libraries log each request at DEBUG, and PLAIN's request carries the password
    in clear: the guard kafkaio installs with the credentials redacts it from every record."""
    s = secured.settings(mechanism)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="kafka")  # CLI tests quieten it for the whole process

    async def aio() -> None:
        producer = AIOKafkaProducer(**kafka_client_kwargs(s))
        await producer.start()
        await producer.stop()

    asyncio.run(aio())
    produce(s.bootstrap, [], **security_kwargs(s))
    assert f"Authenticated as {USER} via {mechanism}" in caplog.text  # aiokafka logged in
    assert "SaslAuthenticateRequest(version=" in caplog.text  # kafka-python logged its request
    assert "auth_bytes=**********" in caplog.text
    assert secured.password not in caplog.text


# ---- a real worker -----------------------------------------------------------------------------


@pytest.mark.kafka
def test_worker_over_sasl_ssl_emits_results_and_never_logs_the_password(
    secured: Secured, tmp_path: Path
) -> None:
    interval, days = 900, 0.25
    start = aligned_start(datetime.now(UTC), days, interval)
    spec = CitySpec(areas=4, meters_per_area=10, days=days, seed=11, start=start)
    city = build(spec)
    security = {k.removeprefix("GRIDWATCH_").lower(): v for k, v in secured.env("SCRAM-SHA-512").items()}
    security.pop("bootstrap")
    # debug: the most a worker ever logs, so the password check covers every library's chatter
    env = worker_env(secured.broker.bootstrap, tmp_path, prefix="gwsec", loglevel="debug", **security)
    s = settings_for(env)
    kw = security_kwargs(s)
    create_topics(s.bootstrap, topic_specs(s), **kw)
    topology = [(s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()]
    produce(s.bootstrap, topology, **kw)
    topic = {"readings": s.topic_readings, "supply": s.topic_supply}
    readings = [(topic[m.kind], m.key.encode(), orjson.dumps(m.value)) for m in messages(city)]
    produce(s.bootstrap, readings, **kw)
    expected = len(city.area_ids) * len(city.times)

    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(env, log_path).start()
    results: dict[tuple[str, str], dict[str, object]] = {}
    try:
        deadline = time.monotonic() + 240
        while len(results) < expected:
            assert worker.alive(), f"worker died:\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"{len(results)} of {expected} results:\n{worker.log_tail()}"
            time.sleep(2)
            for rec in read_topic(s.bootstrap, s.topic_lineloss, idle_s=0.5, **kw):
                v = orjson.loads(rec.value or b"{}")
                results[(str(v["area_id"]), str(v["window_start"]))] = v
        emitted = worker.metric_sum("gridwatch_area_windows_emitted_total")
        assert emitted is not None and emitted >= expected
    finally:
        worker.stop()
    assert {area for area, _ in results} == set(city.area_ids)
    judged = [v for v in results.values() if v["state"] in ("qualified", "high_loss", "negative_loss")]
    assert len(judged) >= expected - len(city.area_ids)  # all but each area's first (no start register)

    log = log_path.read_text(errors="replace")
    assert f"Authenticated as {USER} via SCRAM-SHA-512" in log  # the worker logged in over SASL_SSL
    assert secured.password not in log
    assert secured.password not in repr(s) and secured.password not in str(s)
    assert "**********" in repr(s)


# ---- settings ----------------------------------------------------------------------------------


def _settings(**values: object) -> Settings:
    return Settings.model_validate({"bootstrap": "127.0.0.1:9093", **values})


def test_kafkaio_doctests() -> None:
    """streams/ is outside pytest's testpaths, so its examples run here."""
    import doctest

    import streams.kafkaio

    result = doctest.testmod(streams.kafkaio)
    assert result.attempted >= 2 and result.failed == 0


def test_secrets_never_in_the_settings_repr() -> None:
    s = _settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="hunter2-hunter2",
        mask_key="k" * 32,
        webhook_secret="w" * 32,
    )
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "hunter2" not in text and "k" * 32 not in text and "w" * 32 not in text
    credentials = faust_broker_kwargs(s)["broker_credentials"]
    assert "hunter2" not in repr(credentials)


def test_faust_gets_sasl_credentials_with_a_tls_context(tmp_path: Path) -> None:
    s = _settings(
        security_protocol="sasl_ssl", sasl_mechanism="scram-sha-512", sasl_username="u", sasl_password="p"
    )
    kw = faust_broker_kwargs(s)
    assert kw["broker"] == "kafka://127.0.0.1:9093"
    cred = kw["broker_credentials"]
    assert isinstance(cred, faust.SASLCredentials)
    assert cred.protocol.value == "SASL_SSL" and cred.mechanism.value == "SCRAM-SHA-512"
    assert cred.ssl_context is not None and cred.ssl_context.check_hostname
    assert (cred.username, cred.password) == ("u", "p")
    plain_sasl = faust_broker_kwargs(s.model_copy(update={"security_protocol": "SASL_PLAINTEXT"}))
    assert plain_sasl["broker_credentials"].ssl_context is None
    tls_only = faust_broker_kwargs(_settings(security_protocol="SSL", ssl_check_hostname=False))
    assert isinstance(tls_only["broker_credentials"], faust.SSLCredentials)
    assert not tls_only["broker_credentials"].context.check_hostname
    assert "broker_credentials" not in faust_broker_kwargs(_settings())


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"security_protocol": "TLS"}, "GRIDWATCH_SECURITY_PROTOCOL"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"}, "SASL_MECHANISM"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "SASL_MECHANISM"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "SASL_PASSWORD"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "SSL_CAFILE"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "SSL_KEYFILE"),
    ],
)
def test_unusable_security_settings_are_refused_by_name(values: dict[str, object], complaint: str) -> None:
    s = _settings(**values)
    with pytest.raises(KafkaConfigError, match=complaint):
        kafka_client_kwargs(s)
    with pytest.raises(KafkaConfigError, match=complaint):
        faust_broker_kwargs(s)


class _WithPasswordFile(Settings):
    sasl_password_file: Path | None = None


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "sasl-password"
    secret.write_text("from-a-file\n")
    s = _WithPasswordFile.model_validate(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password_file": secret,
        }
    )
    assert sasl_password(s) == "from-a-file"
    assert kafka_client_kwargs(s)["sasl_plain_password"] == "from-a-file"
    both = s.model_copy(update={"sasl_password": SecretStr("x")})
    with pytest.raises(KafkaConfigError, match="not both"):
        sasl_password(both)

