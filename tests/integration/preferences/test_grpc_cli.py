"""preferences as a client from outside Python sees it: the real server process
(`python -m services.preferences`, on 127.0.0.1, the session's Kafka broker), driven by
grpcurl through server reflection; then the same server with TLS and with mTLS, reached
by grpcurl and by outreach's own contact-plan client.

grpcurl comes from `make grpc-tools` (a prerequisite of `make test`), built from the Go
module proxy into $OUTREACH_CACHE_DIR/bin; without it these tests are skipped with the
reason. Certificates are made for the test in tmp_path (a throwaway CA, a server
certificate for 127.0.0.1/localhost, a client certificate).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.envelope import new_event
from common.topics import CUSTOMERS
from services.outreach.adapters.contact_plans import (
    GrpcContactPlans,
    PreferencesTls,
    PreferencesUnavailable,
)
from tests.conftest import wait_for
from tests.e2e.stack import READ_TOKEN, Shop, Stack

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("OUTREACH_CACHE_DIR", Path.home() / ".cache" / "proactive-outreach"))
GRPCURL = shutil.which("grpcurl", path=str(CACHE / "bin")) or shutil.which("grpcurl")
SERVICE = "outreach.preferences.v1.PreferencesService"
TOKEN = "grpcurl-test-token"

needs_grpcurl = pytest.mark.skipif(
    GRPCURL is None, reason="grpcurl missing: `make grpc-tools` builds it (Go module proxy)"
)


def grpcurl(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """One grpcurl call; its own deadlines are shorter than the subprocess timeout."""
    assert GRPCURL is not None
    return subprocess.run(
        [GRPCURL, "-connect-timeout", "3", "-max-time", "8", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"grpcurl failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


# --- certificates ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = issuer or (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throwaway CA that signs a server certificate (SAN 127.0.0.1, localhost) and a
    client certificate (CN outreach)."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(
        "outreach test CA",
        ca_key,
        None,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    signer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "preferences",
        server_key,
        signer,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                False,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "outreach",
        client_key,
        signer,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    (directory / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=directory / "client.pem",
        client_key=_write_key(client_key, directory / "client.key"),
    )


# --- the server process -------------------------------------------------------------


def launch_preferences(bootstrap: str, data_dir: Path, **env: str) -> Stack:
    """`python -m services.preferences` on 127.0.0.1 with its own topics and data dir."""
    stack = Stack(
        bootstrap=bootstrap,
        prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=data_dir,
        extra_env={
            "PREFERENCES_GRPC_HOST": "127.0.0.1",
            "OUTREACH_HTTP_HOST": "127.0.0.1",
            "OUTREACH_CLOCK": "wall",
            "OUTREACH_TOPIC_PARTITIONS": "1",
            **env,
        },
    )
    stack.launch("preferences")
    return stack


def target(stack: Stack) -> str:
    return f"127.0.0.1:{stack.ports['grpc']}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[dict[str, Stack]]:
    """Three preferences processes, started together (start-up is mostly imports, Alembic
    and the Kafka group join): plaintext with a write token, TLS, and mTLS. Ready means
    /readyz answers 200 (database reachable, Kafka partitions assigned)."""
    tls = {"PREFERENCES_TLS_CERT": str(pki.server_cert), "PREFERENCES_TLS_KEY": str(pki.server_key)}
    stacks: dict[str, Stack] = {}
    try:
        stacks["plaintext"] = launch_preferences(
            kafka_bootstrap, tmp_path_factory.mktemp("prefs"), PREFERENCES_WRITE_TOKEN=TOKEN
        )
        stacks["tls"] = launch_preferences(kafka_bootstrap, tmp_path_factory.mktemp("tls"), **tls)
        stacks["mtls"] = launch_preferences(
            kafka_bootstrap,
            tmp_path_factory.mktemp("mtls"),
            PREFERENCES_TLS_CLIENT_CA=str(pki.ca),
            **tls,
        )
        for name, stack in stacks.items():
            wait_for(lambda s=stack: s.ready("preferences"), timeout=60, message=f"{name} ready")
        yield stacks
    finally:
        for stack in stacks.values():  # SIGTERM to all first: they shut down in parallel
            proc = stack.procs.get("preferences")
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for stack in stacks.values():
            stack.stop()


@pytest.fixture(scope="module")
def plaintext_server(servers: dict[str, Stack]) -> Stack:
    return servers["plaintext"]


@pytest.fixture(scope="module")
def tls_server(servers: dict[str, Stack]) -> Stack:
    return servers["tls"]


@pytest.fixture(scope="module")
def mtls_server(servers: dict[str, Stack]) -> Stack:
    return servers["mtls"]


@pytest.fixture(scope="module")
def customer_id(plaintext_server: Stack, kafka_bootstrap: str) -> str:
    """A customer as the shop announces one: customer.upserted on commerce.customers."""
    cid = f"c-{uuid.uuid4().hex[:8]}"
    shop = Shop(kafka_bootstrap, plaintext_server.prefix)
    try:
        shop.publish(
            CUSTOMERS,
            cid,
            new_event(
                type="customer.upserted",
                source="/shop/test",
                subject=cid,
                time=datetime.now(UTC) - timedelta(minutes=1),
                id=f"cust-{cid}",
                data={
                    "customer_id": cid,
                    "first_name": "Ada",
                    "email": "ada@example.com",
                    "phone": "+4915112345678",
                    "locale": "de-DE",
                    "timezone": "Europe/Berlin",
                    "marketing_opt_in": False,
                },
            ),
        )
    finally:
        shop.close()
    try:
        wait_for(lambda: contact_plan(plaintext_server, cid).get("known"), timeout=60)
    except AssertionError as slow:  # what preferences saw and did, for the failure's reader
        counters = [
            line
            for line in plaintext_server.metrics("preferences").splitlines()
            if not line.startswith("#") and ("consum" in line or "lag" in line)
        ]
        raise AssertionError(
            f"{slow}: customer.upserted not applied\n"
            + "\n".join(counters)
            + "\n"
            + plaintext_server.logs("preferences")[-4000:]
        ) from None
    return cid


def contact_plan(server: Stack, cid: str, category: str = "CATEGORY_SERVICE") -> dict[str, Any]:
    request = json.dumps({"customer_id": cid, "category": category})
    read = f"authorization: Bearer {READ_TOKEN}"
    out = ok(
        grpcurl(
            "-plaintext", "-H", read, "-d", request, target(server), f"{SERVICE}/GetContactPlan"
        )
    )
    return dict(json.loads(out))


# --- plaintext: reflection, health, calls, errors ---------------------------------


@needs_grpcurl
def test_grpcurl_lists_and_describes_the_service_through_reflection(plaintext_server):
    services = ok(grpcurl("-plaintext", target(plaintext_server), "list")).split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services

    methods = ok(grpcurl("-plaintext", target(plaintext_server), "list", SERVICE)).split()
    assert f"{SERVICE}.GetContactPlan" in methods
    assert f"{SERVICE}.WatchChanges" in methods

    described = ok(grpcurl("-plaintext", target(plaintext_server), "describe", SERVICE))
    assert "rpc GetContactPlan ( .outreach.preferences.v1.GetContactPlanRequest )" in described
    assert "returns ( stream .outreach.preferences.v1.PreferenceChange )" in described
    method = ok(
        grpcurl("-plaintext", target(plaintext_server), "describe", f"{SERVICE}.GetContactPlan")
    )
    assert "is a method" in method

    message = ok(
        grpcurl(
            "-plaintext",
            target(plaintext_server),
            "describe",
            "outreach.preferences.v1.ContactPlan",
        )
    )
    assert "repeated .outreach.preferences.v1.ChannelOption channels = 8;" in message


async def test_reflection_finds_the_file_of_a_method_as_ghz_asks_for_it(plaintext_server):
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def ask() -> Any:
        for symbol in (f"{SERVICE}.GetContactPlan", f"{SERVICE}.NoSuchMethod"):
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)

    async with grpc.aio.insecure_channel(target(plaintext_server)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        found, missing = [r async for r in stub.ServerReflectionInfo(ask(), timeout=5)]
    assert found.file_descriptor_response.file_descriptor_proto
    assert missing.error_response.error_code == 5  # NOT_FOUND


@needs_grpcurl
def test_grpcurl_health_check_says_serving(plaintext_server):
    for service in ("", SERVICE):
        out = ok(
            grpcurl(
                "-plaintext",
                "-d",
                json.dumps({"service": service}),
                target(plaintext_server),
                "grpc.health.v1.Health/Check",
            )
        )
        assert json.loads(out) == {"status": "SERVING"}


@needs_grpcurl
def test_grpcurl_gets_the_contact_plan_of_a_customer_the_shop_announced(
    plaintext_server, customer_id
):
    plan = contact_plan(plaintext_server, customer_id)
    # grpcurl prints proto field names; fields at their default (false, "") are left out
    assert plan["customer_id"] == customer_id
    assert plan["first_name"] == "Ada"
    assert (plan["locale"], plan["time_zone"]) == ("de-DE", "Europe/Berlin")
    assert plan["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert plan["version"] == "1"  # int64 is a JSON string
    channels = {c["channel"]: c for c in plan["channels"]}
    assert list(channels) == ["CHANNEL_EMAIL", "CHANNEL_SMS", "CHANNEL_WHATSAPP"]
    assert channels["CHANNEL_EMAIL"] == {
        "channel": "CHANNEL_EMAIL",
        "address": "ada@example.com",
        "usable": True,
        "reason": "ok",
    }
    assert channels["CHANNEL_SMS"]["address"] == "+4915112345678"
    assert channels["CHANNEL_SMS"]["usable"] is True
    marketing = contact_plan(plaintext_server, customer_id, "CATEGORY_MARKETING")
    assert "marketing_opt_in" not in marketing  # false: never consented
    assert {c["reason"] for c in marketing["channels"]} == {"no_consent"}


@needs_grpcurl
def test_grpcurl_reads_need_the_read_token_too(plaintext_server, customer_id):
    request = json.dumps({"customer_id": customer_id, "category": "CATEGORY_SERVICE"})
    refused = grpcurl(
        "-plaintext", "-d", request, target(plaintext_server), f"{SERVICE}/GetContactPlan"
    )
    assert refused.returncode == 64 + 16 and "Code: Unauthenticated" in refused.stderr
    assert "read token" in refused.stderr
    watch = grpcurl(
        "-plaintext",
        "-max-time",
        "2",
        "-d",
        "{}",
        target(plaintext_server),
        f"{SERVICE}/WatchChanges",
    )
    assert "Code: Unauthenticated" in watch.stderr
    assert contact_plan(plaintext_server, customer_id)["customer_id"] == customer_id


@needs_grpcurl
def test_grpcurl_writes_need_the_token_in_the_metadata(plaintext_server, customer_id):
    consent = json.dumps(
        {
            "customer_id": customer_id,
            "consent": {
                "category": "CATEGORY_MARKETING",
                "granted": True,
                "source": "grpcurl_test",
                "evidence": "form 42",
            },
        }
    )
    refused = grpcurl(
        "-plaintext", "-d", consent, target(plaintext_server), f"{SERVICE}/RecordConsent"
    )
    assert refused.returncode == 64 + 16  # grpcurl exits with 64 + the status code
    assert "Code: Unauthenticated" in refused.stderr
    assert "authorization: Bearer" in refused.stderr

    wrong = grpcurl(
        "-plaintext",
        "-H",
        "authorization: Bearer not-the-token",
        "-d",
        consent,
        target(plaintext_server),
        f"{SERVICE}/RecordConsent",
    )
    assert "Code: Unauthenticated" in wrong.stderr

    recorded = json.loads(
        ok(
            grpcurl(
                "-plaintext",
                "-H",
                f"authorization: Bearer {TOKEN}",
                "-d",
                consent,
                target(plaintext_server),
                f"{SERVICE}/RecordConsent",
            )
        )
    )
    assert recorded["marketing_opt_in"] is True
    assert recorded["consent_history"][-1]["source"] == "grpcurl_test"
    assert contact_plan(plaintext_server, customer_id, "CATEGORY_MARKETING")["marketing_opt_in"]


@needs_grpcurl
def test_grpcurl_shows_invalid_argument_with_the_field_violations(plaintext_server, customer_id):
    bad_zone = json.dumps(
        {
            "preferences": {"customer_id": customer_id, "time_zone": "Mars/Olympus"},
            # a FieldMask is an object here: grpcurl's dynamic messages do not take the
            # canonical "time_zone" string form
            "update_mask": {"paths": ["time_zone"]},
        }
    )
    refused = grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {TOKEN}",
        "-d",
        bad_zone,
        target(plaintext_server),
        f"{SERVICE}/UpdatePreferences",
    )
    assert refused.returncode == 64 + 3
    assert "Code: InvalidArgument" in refused.stderr
    assert "type.googleapis.com/google.rpc.BadRequest" in refused.stderr
    assert '"field": "time_zone"' in refused.stderr

    empty = grpcurl(
        "-plaintext",
        "-format-error",
        "-H",
        f"authorization: Bearer {READ_TOKEN}",
        "-d",
        json.dumps({"customer_id": "", "category": "CATEGORY_SERVICE"}),
        target(plaintext_server),
        f"{SERVICE}/GetContactPlan",
    )
    status = json.loads(empty.stderr)  # -format-error: the status as JSON, on stderr
    assert status["code"] == 3  # INVALID_ARGUMENT
    assert status["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert status["details"][0]["field_violations"] == [
        {"field": "customer_id", "description": "must not be empty"}
    ]


# --- TLS and mTLS -------------------------------------------------------------------


def health(*flags: str, server: Stack) -> subprocess.CompletedProcess[str]:
    return grpcurl(*flags, target(server), "grpc.health.v1.Health/Check")


@needs_grpcurl
def test_tls_server_answers_grpcurl_that_trusts_its_ca_and_refuses_plaintext(tls_server, pki):
    assert json.loads(ok(health("-cacert", str(pki.ca), server=tls_server))) == {
        "status": "SERVING"
    }
    by_name = grpcurl(
        "-cacert", str(pki.ca), f"localhost:{tls_server.ports['grpc']}", "list"
    )  # the certificate names localhost too
    assert SERVICE in ok(by_name).split()

    plaintext = health("-plaintext", server=tls_server)
    assert plaintext.returncode == 1
    assert "Failed to dial target host" in plaintext.stderr
    untrusted = health(server=tls_server)  # TLS, but the system's roots only
    assert untrusted.returncode == 1
    assert "certificate signed by unknown authority" in untrusted.stderr


@needs_grpcurl
def test_mtls_server_wants_a_client_certificate_its_ca_signed(mtls_server, pki):
    without = health("-cacert", str(pki.ca), server=mtls_server)
    assert without.returncode == 1  # the handshake fails: grpcurl never gets to call
    assert "Failed to dial target host" in without.stderr

    served = health(
        "-cacert",
        str(pki.ca),
        "-cert",
        str(pki.client_cert),
        "-key",
        str(pki.client_key),
        server=mtls_server,
    )
    assert json.loads(ok(served)) == {"status": "SERVING"}

    # a client certificate from another CA is refused like none at all
    stranger = make_pki(pki.ca.parent / "stranger")
    refused = health(
        "-cacert",
        str(pki.ca),
        "-cert",
        str(stranger.client_cert),
        "-key",
        str(stranger.client_key),
        server=mtls_server,
    )
    assert refused.returncode == 1
    assert "Failed to dial target host" in refused.stderr


async def test_outreachs_contact_plan_client_reaches_preferences_over_tls(tls_server, pki):
    plans = GrpcContactPlans(
        target(tls_server), cache_ttl_s=0, token=READ_TOKEN, tls=PreferencesTls(ca=pki.ca)
    )
    await plans.start()
    try:
        assert await plans.ready()
        assert await plans.get("nobody", "service") is None  # answered: unknown customer
    finally:
        await plans.stop()

    by_name = GrpcContactPlans(
        f"localhost:{tls_server.ports['grpc']}",
        cache_ttl_s=0,
        timeout_s=3,
        token=READ_TOKEN,
        tls=PreferencesTls(ca=pki.ca, server_name="localhost"),
    )
    await by_name.start()
    try:
        assert await by_name.get("nobody", "marketing") is None
    finally:
        await by_name.stop()


async def test_outreachs_contact_plan_client_presents_its_certificate_for_mtls(mtls_server, pki):
    with_cert = GrpcContactPlans(
        target(mtls_server),
        cache_ttl_s=0,
        tls=PreferencesTls(ca=pki.ca, cert=pki.client_cert, key=pki.client_key),
    )
    await with_cert.start()
    try:
        assert await with_cert.get("nobody", "service") is None
    finally:
        await with_cert.stop()

    without_cert = GrpcContactPlans(
        target(mtls_server), cache_ttl_s=0, timeout_s=3, tls=PreferencesTls(ca=pki.ca)
    )
    await without_cert.start()
    try:
        with pytest.raises(PreferencesUnavailable, match="UNAVAILABLE"):
            await without_cert.get("nobody", "service")
    finally:
        await without_cert.stop()
