"""Knative Eventing's OIDC tokens on /events, through a real uvicorn: a JWKS and an OpenID
discovery document served over HTTP (and HTTPS) on loopback, tokens signed by RSA keys made here.

Over 400 lines because the issuer double, the token forger and the test CA serve only these
tests, and each hostile token is a case of its own."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from functions.app import create_app
from functions.errors import ConfigurationError
from functions.events import QUERY_REQUEST, QUERY_RESPONSE
from functions.settings import Settings

from .conftest import Ollama, Published, settings_for
from .servers import serve

AUDIENCE = "knative-rag/rag-query"
TRIGGER = "system:serviceaccount:knative-rag:rag-query-request-oidc-eventing.knative.dev-trigger"
API_KEY = "events-api-key-0001"
KID = "cluster-key-1"
CHALLENGE = 'Bearer realm="knative-rag"'
SENDER_REQUIRED = (
    "an API key or a Knative Eventing OIDC token for this service is required: "
    "Authorization: Bearer <token>"
)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    """A double of a Kubernetes service-account issuer: OpenID discovery and the JWKS, over HTTP.

    It serves ``KEY``'s public half as ``KID``; with ``bearer`` set, the JWKS answers 401 unless
    the request carries ``Authorization: Bearer <bearer>`` (as the in-cluster API server does).
    """

    def __init__(self, bearer: str | None = None) -> None:
        self.bearer = bearer
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
        self.keys = [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/openid/v1/jwks", self.jwks),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        self.requests.append((request.url.path, request.headers.get("authorization")))
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"issuer": base, "jwks_uri": f"{base}/openid/v1/jwks"})

    async def jwks(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        self.requests.append((request.url.path, authorization))
        if self.bearer is not None and authorization != f"Bearer {self.bearer}":
            return JSONResponse({"kind": "Status", "code": 401}, status_code=401)
        return JSONResponse({"keys": self.keys})


def token(issuer: str, *, key: Any = KEY, kid: str = KID, **claims: Any) -> str:
    """A service-account token as Knative Eventing would send it, valid for five minutes."""
    now = int(time.time())
    payload = {"iss": issuer, "aud": AUDIENCE, "sub": TRIGGER, "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(issuer: str) -> str:
    """``alg: none``: claims that would pass, and no signature at all."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": TRIGGER, "iat": now, "exp": now + 300}
    return f"{_b64({'alg': 'none', 'kid': KID})}.{_b64(claims)}."


def hmac_with_public_key(issuer: str) -> str:
    """HS256 "signed" with the issuer's public key as the secret: the classic confusion attack."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": TRIGGER, "iat": now, "exp": now + 300}
    signing_input = f"{_b64({'alg': 'HS256', 'kid': KID, 'typ': 'JWT'})}.{_b64(claims)}"
    secret = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def send_event(
    client: httpx.Client, headers: dict[str, str] | None = None, path: str = "/events"
) -> httpx.Response:
    """A binary-mode query request, as a Broker delivers it."""
    return client.post(
        path,
        json={"query": "facts about rivers", "mode": "retrieve", "top_k": 2},
        headers={
            "ce-specversion": "1.0",
            "ce-id": uuid.uuid4().hex,
            "ce-source": "tests/oidc",
            "ce-type": QUERY_REQUEST,
            **(headers or {}),
        },
    )


def refusal(response: httpx.Response) -> tuple[int, str, str | None, dict[str, Any]]:
    return (
        response.status_code,
        response.headers["content-type"],
        response.headers.get("www-authenticate"),
        response.json(),
    )


def problem(status: int, detail: str) -> dict[str, Any]:
    titles = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}
    return {"type": "about:blank", "title": titles[status], "status": status, "detail": detail}


@dataclass
class Function:
    """A function with API keys and OIDC on, its client, and the issuer double it trusts."""

    client: httpx.Client
    issuer_url: str
    issuer: Issuer


@contextmanager
def function(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        if settings.store_uri is not None:
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        yield client


@pytest.fixture(scope="module")
def secured(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Function]:
    issuer = Issuer()
    with serve(issuer.app) as issuer_url:
        settings = settings_for(
            published.store_uri,
            _ollama_server,
            tmp_path_factory.mktemp("oidc"),
            llm_provider="none",
            api_keys=API_KEY,
            oidc_issuer=issuer_url,
            oidc_audience=AUDIENCE,
            oidc_subjects="system:serviceaccount:knative-rag:*, system:serviceaccount:ops:sender",
        )
        with function(settings) as client:
            yield Function(client, issuer_url, issuer)


def test_a_valid_token_delivers_and_keys_still_work(secured: Function) -> None:
    client, url = secured.client, secured.issuer_url
    bearer = {"Authorization": f"Bearer {token(url)}"}
    delivered = send_event(client, bearer)
    exact = send_event(
        client, {"Authorization": f"Bearer {token(url, sub='system:serviceaccount:ops:sender')}"}
    )
    by_key = send_event(client, {"X-API-Key": API_KEY})
    by_bearer_key = send_event(client, {"Authorization": f"Bearer {API_KEY}"})
    query = client.post("/query", json={"query": "rivers"}, headers={"X-API-Key": API_KEY})
    token_on_query = client.post("/query", json={"query": "rivers"}, headers=bearer)
    assert (delivered.status_code, delivered.headers["ce-type"]) == (200, QUERY_RESPONSE)
    assert [r.status_code for r in (exact, by_key, by_bearer_key, query)] == [200] * 4
    # Tokens are for event delivery only: every other route still wants an API key.
    assert refusal(token_on_query) == (
        401,
        "application/problem+json",
        CHALLENGE + ', error="invalid_token"',
        problem(401, "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"),
    )
    # Discovery once, then the keys once: later tokens are checked against the cached keys.
    assert [path for path, _ in secured.issuer.requests] == [
        "/.well-known/openid-configuration",
        "/openid/v1/jwks",
    ]


def _bad_tokens(url: str) -> dict[str, str | None]:
    now = int(time.time())
    return {
        "expired": token(url, iat=now - 3600, exp=now - 600),
        "wrong-audience": token(url, aud="some-other-sink"),
        "wrong-issuer": token(url, iss="https://issuer.example.com"),
        "other-key": token(url, key=OTHER_KEY),
        "unknown-kid": token(url, key=OTHER_KEY, kid="not-a-cluster-key"),
        "not-yet-valid": token(url, nbf=now + 600),
        "no-subject": token(url, sub=None),
        "alg-none": unsigned(url),
        "hs256-public-key": hmac_with_public_key(url),
        "garbage": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl-garbage",
        "not-a-jwt": "some-wrong-api-key",
        "missing": None,
    }


# What the operator reads for each (the log line starts with this); the client is told nothing.
WHY = {
    "expired": "POST /events: token refused (401): expired: Signature has expired (the token "
    f"says sub='{TRIGGER}', exp=",
    "wrong-audience": "POST /events: token refused (401): wrong audience: Audience doesn't "
    f"match (the token says sub='{TRIGGER}', aud='some-other-sink')",
    "wrong-issuer": "POST /events: token refused (401): wrong issuer: Invalid issuer (the token "
    f"says sub='{TRIGGER}', iss='https://issuer.example.com')",
    "other-key": "POST /events: token refused (401): bad signature: Signature verification failed",
    "unknown-kid": "POST /events: token refused (401): no key of the issuer fits: Unable to find "
    'a signing key that matches: "not-a-cluster-key"',
    "not-yet-valid": "POST /events: token refused (401): not valid yet: The token is not yet "
    "valid (nbf)",
    "no-subject": "POST /events: token refused (401): a required claim is missing: Token is "
    'missing the "sub" claim',
    "alg-none": "POST /events: token refused (401): algorithm 'none' is not allowed",
    "hs256-public-key": "POST /events: token refused (401): algorithm 'HS256' is not allowed",
    "garbage": "POST /events: token refused (401): no key id (kid) in the header",
    "not-a-jwt": "POST /events: neither an API key nor a JWT",
    "missing": None,
}


@pytest.mark.parametrize("case", list(WHY), ids=list(WHY))
def test_bad_tokens_are_401_and_the_log_says_why(
    secured: Function, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _bad_tokens(secured.issuer_url)[case]
    with caplog.at_level(logging.WARNING, logger="functions.guards"):
        response = send_event(secured.client, {"Authorization": f"Bearer {bad}"} if bad else {})
    error = ', error="invalid_token"' if bad else ""
    assert refusal(response) == (
        401,
        "application/problem+json",
        CHALLENGE + error,
        problem(401, SENDER_REQUIRED),
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "functions.guards"]
    if WHY[case] is None:
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith(WHY[case]), lines[0]
    assert bad is None or bad not in caplog.text  # the token itself is never logged


def test_a_subject_outside_the_allow_list_is_403(
    secured: Function, caplog: pytest.LogCaptureFixture
) -> None:
    outsider = "system:serviceaccount:other-team:oidc-trigger"
    with caplog.at_level(logging.WARNING, logger="functions.guards"):
        response = send_event(
            secured.client, {"Authorization": f"Bearer {token(secured.issuer_url, sub=outsider)}"}
        )
    assert refusal(response) == (
        403,
        "application/problem+json",
        CHALLENGE + ', error="insufficient_scope"',
        problem(403, "this token's subject may not deliver events here"),
    )
    assert [r.getMessage() for r in caplog.records if r.name == "functions.guards"] == [
        f"POST /events: token refused (403): subject '{outsider}' is not on RAG_OIDC_SUBJECTS"
    ]


def test_without_api_keys_events_still_need_a_token(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    issuer = Issuer()
    with serve(issuer.app) as url:
        settings = settings_for(
            published.store_uri, ollama, tmp_path, llm_provider="none", oidc_issuer=url,
            oidc_audience=AUDIENCE,
        )  # fmt: skip
        with function(settings) as client:
            anonymous = send_event(client)
            delivered = send_event(client, {"Authorization": f"Bearer {token(url)}"})
            query = client.post("/query", json={"query": "rivers", "mode": "retrieve"})
    assert refusal(anonymous) == (
        401, "application/problem+json", CHALLENGE, problem(401, SENDER_REQUIRED)
    )  # fmt: skip
    assert (delivered.status_code, query.status_code) == (200, 200)  # the rest stays open


def _silent_port() -> tuple[socket.socket, int]:
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    return silent, silent.getsockname()[1]


@pytest.mark.parametrize("issuer_state", ["refused", "silent"])
def test_an_unreachable_issuer_is_503_with_retry_after_not_a_hang(
    issuer_state: str, caplog: pytest.LogCaptureFixture
) -> None:
    silent, port = _silent_port()
    if issuer_state == "refused":
        silent.close()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(oidc_issuer=url, oidc_audience=AUDIENCE, oidc_timeout_s=0.5)
    with silent, function(settings) as client, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        first = send_event(client, {"Authorization": f"Bearer {token(url)}"})
        seconds = time.monotonic() - started
        again = send_event(client, {"Authorization": f"Bearer {token(url)}"})
    for response in (first, again):
        assert (response.status_code, response.headers["retry-after"], response.json()) == (
            503,
            "1",
            problem(503, "the token cannot be checked now; retry shortly"),
        )
    assert seconds < 3
    lines = [r.getMessage() for r in caplog.records if r.name == "functions.guards"]
    assert lines[0].startswith(
        "POST /events: token refused (503): the issuer's keys cannot be fetched: OpenID "
        f"discovery at {url}/.well-known/openid-configuration failed"
    )


def _tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 that it signed: (ca.crt, server.crt, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test cluster CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_in_cluster_keys_over_tls_with_the_pod_s_own_token(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    """As in a cluster: the API server's JWKS over HTTPS, trusted through the cluster CA, fetched
    with the pod's projected service-account token; the issuer is not fetched at all."""
    ca, cert, key = _tls(tmp_path)
    pod_token = tmp_path / "token"
    pod_token.write_text("projected-service-account-token-0001\n")
    issuer = Issuer(bearer="projected-service-account-token-0001")
    cluster = "https://kubernetes.default.svc.cluster.local"
    with serve(issuer.app, tls=(cert, key)) as url:
        settings = settings_for(
            published.store_uri, ollama, tmp_path, llm_provider="none", oidc_issuer=cluster,
            oidc_audience=AUDIENCE, oidc_jwks_url=f"{url}/openid/v1/jwks", oidc_ca_file=ca,
            oidc_token_file=pod_token,
        )  # fmt: skip
        with function(settings) as client:
            delivered = send_event(client, {"Authorization": f"Bearer {token(cluster)}"})
        untrusted = settings.model_copy(update={"oidc_ca_file": None})
        with function(untrusted) as client:
            refused = send_event(client, {"Authorization": f"Bearer {token(cluster)}"})
    assert delivered.status_code == 200
    assert issuer.requests == [("/openid/v1/jwks", "Bearer projected-service-account-token-0001")]
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"oidc_issuer": "https://issuer.example.com"}, "RAG_OIDC_ISSUER and RAG_OIDC_AUDIENCE"),
        ({"oidc_audience": AUDIENCE}, "RAG_OIDC_ISSUER and RAG_OIDC_AUDIENCE"),
        (
            {"oidc_issuer": "kubernetes.default.svc", "oidc_audience": AUDIENCE},
            "not an http(s) URL",
        ),
        (
            {
                "oidc_issuer": "https://issuer.example.com",
                "oidc_audience": AUDIENCE,
                "oidc_ca_file": Path("/nonexistent/ca.crt"),
            },
            "No such file",
        ),
    ],
    ids=["issuer-only", "audience-only", "not-a-url", "missing-ca-file"],
)
def test_oidc_settings_that_cannot_work_are_configuration_errors(
    overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        create_app(Settings(**overrides))
    assert reason in raised.value.message


def test_pyjwt_is_imported_only_when_oidc_is_configured() -> None:
    script = (
        "import json, sys\n"
        "from functions.app import create_app\n"
        "from functions.settings import Settings\n"
        "create_app(Settings())\n"
        "plain = 'jwt' in sys.modules\n"
        "create_app(Settings(oidc_issuer='https://i.example', oidc_audience='a'))\n"
        "print(json.dumps([plain, 'jwt' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == [False, True]


def test_the_tls_context_is_checked_at_start_up(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError) as raised:
        create_app(
            Settings(oidc_issuer="https://i.example", oidc_audience=AUDIENCE, oidc_ca_file=not_pem)
        )
    assert raised.value.message.startswith("the OIDC settings cannot work: ")
    assert isinstance(raised.value.__cause__, ssl.SSLError)
