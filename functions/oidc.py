"""Knative Eventing's OIDC tokens: who may deliver events to ``/events``.

With the ``authentication-oidc`` feature on, Knative Eventing sends each delivery with
``Authorization: Bearer <JWT>``: a Kubernetes service-account token of the sender's own identity
(a Trigger's is ``system:serviceaccount:<namespace>:<trigger>-oidc-...``) whose audience is the
sink's. ``TokenVerifier`` checks such a token the way the sink must:

- the signature, against the issuer's JWKS (asymmetric algorithms only: never ``none``, never
  HMAC, whose "secret" an attacker could take from the public key);
- ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` (with ``LEEWAY_S`` of clock skew), ``sub``
  present, and optionally ``sub`` on an allow-list (a trailing ``*`` matches a prefix).

The keys come from ``jwks_url``, else from OpenID discovery (``<issuer>/.well-known/
openid-configuration`` → ``jwks_uri``), with a timeout, a CA bundle and a bearer token read from
a file at each fetch (the in-cluster API server wants the caller's own service-account token,
which the kubelet rotates). PyJWT's ``PyJWKClient`` caches them for five minutes and refreshes
at most every 30 s for an unknown key id; after a failed fetch, requests fail fast for a second.

A ``Verdict`` says what to answer: 200 valid, 401 invalid (``reason`` says which check failed:
for the log, not the client), 403 a valid token of a subject not allowed, 503 the keys cannot be
fetched (the sender retries). PyJWT is imported only when a verifier is built.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ALGORITHMS", "LEEWAY_S", "TokenVerifier", "Verdict"]

# Asymmetric only: the keys are public, so an HMAC "signature" would prove nothing.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
LEEWAY_S = 30.0
_QUIET_AFTER_FAILURE_S = 1.0
_CACHE_S = 300.0


@dataclass(frozen=True)
class Verdict:
    """What checking one token found: the HTTP status it earns and, for the log, why."""

    status: int
    reason: str
    subject: str | None = None


class TokenVerifier:
    """Checks Knative Eventing OIDC tokens against one issuer, audience and subject list."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        ca_file: Path | None = None,
        token_file: Path | None = None,
        subjects: Iterable[str] = (),
        timeout_s: float = 5.0,
    ) -> None:
        import jwt  # only here: a function without OIDC never pays for the import

        for url in (issuer, jwks_url or issuer):
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        if not audience:
            raise ValueError("an OIDC audience is required")
        self.issuer = issuer
        self.audience = audience
        self.subjects = [s.strip() for s in subjects if s.strip()]
        self._jwt = jwt
        self._jwks_url = jwks_url
        self._token_file = token_file
        self._timeout_s = timeout_s
        # Read now: a missing or broken CA bundle is a configuration error, found at start-up.
        self._context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._client: Any = None
        self._failed_at = -_QUIET_AFTER_FAILURE_S
        self._lock = threading.Lock()

    def verify(self, token: str) -> Verdict:
        """Check one token (blocking: it may fetch the issuer's keys)."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Verdict(401, "not a JWT")
        alg, kid = header.get("alg"), header.get("kid")
        # Before any fetch, so that garbage costs the issuer nothing.
        if alg not in ALGORITHMS:
            return Verdict(401, f"algorithm {str(alg)[:16]!r} is not allowed")
        if not kid:
            return Verdict(401, "no key id (kid) in the header")
        try:
            key = self._keys().get_signing_key(kid)
        except (jwt.PyJWKClientConnectionError, _Unavailable) as exc:
            return Verdict(503, f"the issuer's keys cannot be fetched: {exc}")
        except jwt.PyJWTError as exc:
            # No such key id (the token's fault), or no usable keys at all (the issuer's: the
            # sender should retry, not drop the event).
            unknown = isinstance(exc, jwt.PyJWKClientError) and "Unable to find" in str(exc)
            return Verdict(401 if unknown else 503, f"no key of the issuer fits: {exc}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            return Verdict(401, _why(exc, token, jwt))
        subject = str(claims["sub"])
        if self.subjects and not any(_matches(subject, s) for s in self.subjects):
            return Verdict(403, f"subject {subject!r} is not on RAG_OIDC_SUBJECTS", subject)
        return Verdict(200, "valid", subject)

    def _keys(self) -> Any:
        """PyJWT's caching JWKS client, made at the first token (after discovery)."""
        with self._lock:
            if self._client is None:
                self._quiet()
                url = self._jwks_url or self._discover()
                client: Any = self._jwt.PyJWKClient(
                    url, lifespan=_CACHE_S, timeout=self._timeout_s, ssl_context=self._context
                )
                fetch = client.fetch_data

                def fetch_data() -> Any:
                    # PyJWKClient calls this for every fetch: a fresh token each time.
                    self._quiet()
                    client.headers = self._headers()
                    try:
                        return fetch()
                    except self._jwt.PyJWKClientConnectionError:
                        self._failed_at = time.monotonic()
                        raise

                client.fetch_data = fetch_data
                self._client = client
            return self._client

    def _quiet(self) -> None:
        # A down issuer would otherwise cost every request a timeout, and the issuer a fetch.
        if time.monotonic() - self._failed_at < _QUIET_AFTER_FAILURE_S:
            raise _Unavailable("the last fetch failed under a second ago")

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        request = urllib.request.Request(url, headers=self._headers())  # noqa: S310 (http(s))
        handlers: list[Any] = [_NoRedirects()]
        if self._context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self._context))
        try:
            opener = urllib.request.build_opener(*handlers)
            with opener.open(request, timeout=self._timeout_s) as response:
                return str(json.load(response)["jwks_uri"])
        except (OSError, ValueError, LookupError, TypeError) as exc:
            self._failed_at = time.monotonic()
            raise _Unavailable(f"OpenID discovery at {url} failed: {exc!r}") from exc

    def _headers(self) -> dict[str, str]:
        if self._token_file is None:
            return {}
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:
            self._failed_at = time.monotonic()
            raise _Unavailable(f"RAG_OIDC_TOKEN_FILE cannot be read: {exc.strerror}") from exc
        return {"Authorization": f"Bearer {token}"}


class _Unavailable(Exception):
    """The issuer's keys cannot be had now: discovery failed, the token file is unreadable."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token elsewhere; PyJWKClient refuses them too.
    def redirect_request(self, *args: Any) -> None:
        return None


def _matches(subject: str, allowed: str) -> bool:
    return subject.startswith(allowed[:-1]) if allowed.endswith("*") else subject == allowed


def _why(exc: Exception, token: str, jwt: Any) -> str:
    """Which check failed and what the token claimed (never the token itself)."""
    checks = [
        (jwt.ExpiredSignatureError, "expired", "exp"),
        (jwt.InvalidAudienceError, "wrong audience", "aud"),
        (jwt.InvalidIssuerError, "wrong issuer", "iss"),
        (jwt.ImmatureSignatureError, "not valid yet", "nbf"),
        (jwt.InvalidSignatureError, "bad signature", None),
        (jwt.MissingRequiredClaimError, "a required claim is missing", None),
    ]
    what, claim = next(
        ((w, c) for kind, w, c in checks if isinstance(exc, kind)), ("invalid", None)
    )
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}
    said = {k: claims[k] for k in ("sub", claim) if k and k in claims}
    told = ", ".join(f"{k}={str(v)[:100]!r}" for k, v in said.items())
    return f"{what}: {exc}" + (f" (the token says {told})" if told else "")
