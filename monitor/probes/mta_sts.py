"""MTA-STS (RFC 8461): the _mta-sts TXT record, the HTTPS policy fetch and parse, and MX pattern matching."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509

from monitor.model.failures import LookupFailure
from monitor.model.results import Reason
from monitor.probes import resolve

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3 lets senders limit the body; 64 KiB is generous
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: about one year
MODES = ("enforce", "testing", "none")

# Error kinds of StsTxt.error_kind and StsPolicy.error_kind.
TXT_ABSENT, TXT_MULTIPLE, TXT_MALFORMED, TXT_DNS = "absent", "multiple", "malformed", "dns"
DNS, CONNECT, TIMEOUT, TLS, TLS_VERIFY = "dns", "connect", "timeout", "tls", "tls_verify"
HTTP_STATUS, CONTENT_TYPE, PARSE = "http_status", "content_type", "parse"

_TXT_VERSION = re.compile(r"v=STSv1(?![A-Za-z0-9])")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")  # VCHAR except ";" and "="
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_MX_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})+")
_MAX_AGE = re.compile(r"[0-9]{1,10}")


# -- the TXT record ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StsTxt:
    """The `_mta-sts.{domain}` TXT lookup: the policy id, or why there is no usable record."""

    name: str
    id: str = ""
    records: tuple[str, ...] = ()  # the STSv1 records found (normally one)
    error: str = ""
    error_kind: str = ""  # absent, multiple, malformed or dns; "" when id is set

    @property
    def ok(self) -> bool:
        return not self.error


def parse_txt_record(text: str) -> str:
    """The id of one STSv1 TXT record (RFC 8461 3.1); ValueError when it is not valid."""
    fields = [f.strip(" \t") for f in text.split(";")]
    if not _TXT_VERSION.fullmatch(fields[0]):
        raise ValueError(f"does not start with v=STSv1: {text!r}")
    if fields[-1] == "":
        fields.pop()  # a trailing ";" is allowed
    sts_id = ""
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if not sep or not field:
            raise ValueError(f"field {field!r} is not key=value")
        if key == "id":
            if not _TXT_ID.fullmatch(value):
                raise ValueError(f"id {value!r} is not 1 to 32 letters and digits")
            if sts_id:
                raise ValueError("more than one id")
            sts_id = value
        elif not (_TXT_EXT_NAME.fullmatch(key) and _TXT_EXT_VALUE.fullmatch(value)):
            raise ValueError(f"invalid extension field {field!r}")
    if not sts_id:
        raise ValueError("no id field")
    return sts_id


def select_txt(name: str, texts: Iterable[str]) -> StsTxt:
    """The StsTxt for the TXT strings at `name`: exactly one valid STSv1 record, or an error.

    RFC 8461 3.1: records not starting with v=STSv1 are ignored; several STSv1 records or
    an invalid one mean there is no policy.
    """
    sts = tuple(t for t in texts if _TXT_VERSION.match(t))
    if not sts:
        return StsTxt(name, error=f"{name}: no v=STSv1 TXT record", error_kind=TXT_ABSENT)
    if len(sts) > 1:
        return StsTxt(
            name, records=sts, error=f"{name}: {len(sts)} v=STSv1 TXT records (must be one)", error_kind=TXT_MULTIPLE
        )
    try:
        sts_id = parse_txt_record(sts[0])
    except ValueError as exc:
        return StsTxt(name, records=sts, error=f"{name}: {exc}", error_kind=TXT_MALFORMED)
    return StsTxt(name, id=sts_id, records=sts)


async def lookup_txt(resolver: dns.asyncresolver.Resolver, domain: str) -> StsTxt:
    """The `_mta-sts.{domain}` TXT record; the resolver's lifetime bounds the lookup."""
    name = f"_mta-sts.{domain.rstrip('.')}"
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return select_txt(name, ())
    except (dns.exception.DNSException, OSError, TimeoutError) as exc:
        return StsTxt(name, error=str(resolve.classify(exc, name, "TXT")), error_kind=TXT_DNS)
    texts = [
        # one record may be split in several strings: they are concatenated (RFC 7208 3.3 style)
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    ]
    return select_txt(name, texts)


# -- the policy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy file."""

    mode: str
    max_age: int
    mx_patterns: tuple[str, ...]


class PolicyError(ValueError):
    """The policy text is not a valid STSv1 policy."""


def parse_policy(text: str) -> Policy:
    """Parse a policy body (RFC 8461 3.2): LF or CRLF lines of `key: value`.

    Unknown keys are ignored; for version, mode and max_age the first occurrence counts;
    every mx line adds a pattern. Enforce and testing policies need at least one mx.
    """
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line {number} is not key: value: {line[:80]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            if not _MX_PATTERN.fullmatch(value):
                raise PolicyError(f"line {number}: invalid mx pattern {value[:80]!r}")
            patterns.append(value)
        else:
            fields.setdefault(key, value)
    version = fields.get("version")
    if version != "STSv1":
        raise PolicyError("no version: STSv1" if version is None else f"unknown version {version[:40]!r}")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError("no mode" if mode is None else f"invalid mode {mode[:40]!r}")
    max_age_text = fields.get("max_age")
    if max_age_text is None:
        raise PolicyError("no max_age")
    if not _MAX_AGE.fullmatch(max_age_text) or int(max_age_text) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age_text[:40]!r} is not a number from 0 to {MAX_AGE_LIMIT}")
    if mode != "none" and not patterns:
        raise PolicyError(f"mode {mode} without any mx pattern")
    return Policy(mode=mode, max_age=int(max_age_text), mx_patterns=tuple(patterns))


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """Outcome of fetching `https://mta-sts.{domain}/.well-known/mta-sts.txt`."""

    domain: str
    url: str
    mode: str = ""  # enforce, testing or none; "" when no policy was had
    max_age: int | None = None
    mx_patterns: tuple[str, ...] = ()
    verified: bool = False  # the HTTPS certificate verified for mta-sts.{domain}
    error: str = ""
    error_kind: str = ""  # dns, connect, timeout, tls, tls_verify, http_status, content_type, parse
    http_status: int = 0
    cert_not_after: datetime | None = None  # expiry of the HTTPS server's certificate

    @property
    def ok(self) -> bool:
        return not self.error


class _ResolveFailed(OSError):
    """Raised by DnsResolver; aiohttp wraps it, fetch_policy recognises it as a DNS failure."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DnsResolver(AbstractResolver):
    """aiohttp name resolution through our dnspython resolver (A, then AAAA)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await resolve.addresses(self._resolver, host)
        except LookupFailure as exc:
            raise _ResolveFailed(exc.reason, str(exc)) from None
        results: list[ResolveResult] = []
        for address in found:
            af = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
            if family in (socket.AF_INET, socket.AF_INET6) and af != family:
                continue
            results.append(
                ResolveResult(hostname=host, host=address, port=port, family=af, proto=0, flags=socket.AI_NUMERICHOST)
            )
        if not results:
            raise _ResolveFailed(Reason.NO_ADDRESS, f"{host}: no address of family {family!r}")
        return results

    async def close(self) -> None:
        return None


class _CertResponse(aiohttp.ClientResponse):
    """Keeps the server certificate: aiohttp releases the connection as soon as a short body is in."""

    peer_der: bytes | None = None

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(ssl_object, ssl.SSLObject):
            self.peer_der = ssl_object.getpeercert(binary_form=True)
        return await super().start(connection)


@functools.lru_cache(maxsize=16)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    # Building a context with the system CAs costs ~50 ms of CPU: once per CA file, not per fetch.
    return ssl.create_default_context(cafile=ca_file)


def _not_after(der: bytes | None) -> datetime | None:
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc
    except ValueError:
        return None


def _classify(exc: BaseException) -> tuple[str, str]:
    """(error_kind, message) of a failed request."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error: Any = exc.certificate_error
        return TLS_VERIFY, f"certificate verification failed: {getattr(cert_error, 'verify_message', cert_error)}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return TLS, f"TLS handshake failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _ResolveFailed):
        return DNS, str(exc.os_error)
    if isinstance(exc, TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CONNECT, f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return CONNECT, f"{type(exc).__name__}: {exc}"


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` bytes (nothing more is read then)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    body = bytearray()
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    return None


async def fetch_policy(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    port: int = 443,
    ca_file: Path | str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - also aiohttp's ClientTimeout; callers pass their check timeout
) -> StsPolicy:
    """GET the policy over verified HTTPS (RFC 8461 3.3) and parse it; every outcome is a value.

    `mta-sts.{domain}` is resolved through `resolver`; the certificate must verify for that
    name against the system CAs or `ca_file`. Redirects are not followed, the media type
    must be text/plain, and at most MAX_POLICY_BYTES are read. `timeout` bounds it all.
    """
    domain = domain.rstrip(".")
    host = f"mta-sts.{domain}"
    url = f"https://{host}{'' if port == 443 else f':{port}'}{WELL_KNOWN_PATH}"
    context = _ssl_context(str(ca_file) if ca_file else None)
    peer_der: bytes | None = None
    status = 0
    try:
        async with asyncio.timeout(timeout):
            connector = aiohttp.TCPConnector(resolver=DnsResolver(resolver), ssl=context, use_dns_cache=False)
            async with (
                aiohttp.ClientSession(
                    connector=connector,
                    response_class=_CertResponse,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    trust_env=False,  # no proxies from the environment: we test the domain's own server
                ) as session,
                session.get(url, allow_redirects=False, headers={"Accept": "text/plain"}) as response,
            ):
                if isinstance(response, _CertResponse):
                    peer_der = response.peer_der
                status = response.status
                body = await _check_response(response)
    except _Rejected as exc:
        return StsPolicy(
            domain,
            url,
            verified=True,
            error=str(exc),
            error_kind=exc.kind,
            http_status=status,
            cert_not_after=_not_after(peer_der),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        kind, message = _classify(exc)
        verified = kind not in (DNS, TLS, TLS_VERIFY) and peer_der is not None
        return StsPolicy(
            domain,
            url,
            verified=verified,
            error=f"{url}: {message}",
            error_kind=kind,
            http_status=status,
            cert_not_after=_not_after(peer_der),
        )
    try:
        policy = parse_policy(body)
    except PolicyError as exc:
        return StsPolicy(
            domain,
            url,
            verified=True,
            error=f"{url}: invalid policy: {exc}",
            error_kind=PARSE,
            http_status=status,
            cert_not_after=_not_after(peer_der),
        )
    return StsPolicy(
        domain,
        url,
        mode=policy.mode,
        max_age=policy.max_age,
        mx_patterns=policy.mx_patterns,
        verified=True,
        http_status=status,
        cert_not_after=_not_after(peer_der),
    )


class _Rejected(Exception):
    """The HTTPS exchange worked but the response is not a policy."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def _check_response(response: aiohttp.ClientResponse) -> str:
    url = str(response.url)
    if response.status != 200:
        location = response.headers.get("Location", "")
        if 300 <= response.status < 400:
            message = f"{url}: HTTP {response.status} redirect to {location[:200]!r}"
            raise _Rejected(HTTP_STATUS, message + " (not followed: RFC 8461 3.3)")
        raise _Rejected(HTTP_STATUS, f"{url}: HTTP {response.status} {response.reason or ''}".rstrip())
    if response.content_type != "text/plain":
        raise _Rejected(CONTENT_TYPE, f"{url}: Content-Type {response.content_type!r}, not text/plain")
    body = await _read_bounded(response, MAX_POLICY_BYTES)
    if body is None:
        raise _Rejected(PARSE, f"{url}: policy larger than {MAX_POLICY_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejected(PARSE, f"{url}: policy is not UTF-8 text") from None


# -- MX matching ---------------------------------------------------------------------


def mx_matches(pattern: str, exchange: str) -> bool:
    """RFC 8461 4.1: exact match, or "*." covering exactly one leftmost label; case and final dots ignored."""
    p = pattern.lower().rstrip(".")
    e = exchange.lower().rstrip(".")
    if not p or not e:
        return False
    if p.startswith("*."):
        head, dot, rest = e.partition(".")
        return bool(head) and bool(dot) and rest == p[2:]
    return p == e


def check_exchanges(policy: StsPolicy | Policy, exchanges: Sequence[str]) -> list[str]:
    """The exchanges no mx pattern of the policy covers, in the given order.

    Only meaningful for a policy in enforce or testing mode (mode none has no patterns).
    """
    return [e for e in exchanges if not any(mx_matches(p, e) for p in policy.mx_patterns)]
