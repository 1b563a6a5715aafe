"""Configuration types, validation and loading: the one place that knows the YAML shape."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from monitor.config.document import ConfigError as ConfigError  # re-exported: raised by both
from monitor.config.document import read_document

DEFAULT_SMTP_PORTS = {"none": 25, "starttls": 25, "implicit": 465}
TlsMode = Literal["none", "starttls", "implicit"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `250ms` or plain seconds, to seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"bad duration {value!r}: use seconds or a string like 30s, 5m, 1h")
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]


def split_host_port(text: str, default_port: int | None) -> tuple[str, int | None]:
    """`host`, `host:port`, `1.2.3.4:53`, `[::1]:53` or a bare IPv6 address."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare name or a bare IPv6 address
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}: use 1-65535")
    return host, int(port_text)


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAYBE_IP = re.compile(r"[0-9.]+|.*:.*")  # only these can be IP literals: skip ip_address's ValueError otherwise


@functools.lru_cache(maxsize=4096)  # HELO names and SNI names repeat across thousands of probes
def _check_hostname(value: str) -> str:
    value = value.strip().rstrip(".") if value.strip() != "." else value
    if _MAYBE_IP.fullmatch(value):
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    if not value or len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError(f"bad host name {value!r}")
    return value


Hostname = Annotated[str, BeforeValidator(lambda v: _check_hostname(v) if isinstance(v, str) else v)]


@functools.lru_cache(maxsize=4096)
def _shared_path(text: str) -> Path:
    """One Path per CA file name: probes naming one CA file hold one object. The RSS target needs it since
    history and transcripts came: the scale bench (10,000 probes, one CA file) measured 301 MiB of 286 allowed
    without it and 291 MiB with it, agent and probe process together (2026-12-07, bench/README.md);
    tracemalloc finds 3.6 MiB of Path objects in the agent alone. Made from the text, before pydantic would
    build one of its own: 10,000 Paths built and dropped took parse_config from 0.08-0.12 s to 0.13-0.18 s."""
    return Path(text)


CaFile = Annotated[Path, BeforeValidator(lambda v: _shared_path(v) if type(v) is str else v)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """A secret given inline, from a file, or from an environment variable; never printed."""

    value: SecretStr | None = None
    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        given = [k for k in ("value", "file", "env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of value, file, env")
        return self

    def reveal(self) -> str:
        if self.value is not None:
            return self.value.get_secret_value()
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from None
        assert self.env is not None
        if self.env not in os.environ:
            raise ValueError(f"environment variable {self.env} is not set")
        return os.environ[self.env]


def _secret_from_shorthand(value: Any) -> Any:
    return {"value": value} if isinstance(value, str) else value


SecretField = Annotated[Secret, BeforeValidator(_secret_from_shorthand)]


class Defaults(_Strict):
    interval: Duration = 60.0
    timeout: Duration = 10.0
    alert_after: int = Field(default=2, ge=1)
    max_concurrency: int = Field(default=500, ge=1, le=100_000)
    cert_warn_days: int = Field(default=14, ge=0)
    helo: Hostname | None = None


def _check_location(value: str) -> str:
    if not value.isprintable():
        raise ValueError("location must be printable text (no control characters)")
    return value


# Where the agent probes from (a site, region or network): a label value and sysLocation.0.
Location = Annotated[str, Field(max_length=100), AfterValidator(_check_location)]


class AgentConfig(_Strict):
    state_dir: Path = Path("/var/lib/smtp-monitor")
    # Probes run in a process of their own, so SNMP and scrapes never delay what they measure.
    probe_process: bool = True
    # The vantage point: the `location` label of every probe series and the default sysLocation.0.
    # Empty: no label (Prometheus treats an empty label as none), sysLocation.0 empty.
    location: Location = ""


class HistoryConfig(_Strict):
    """Every result, compacted, kept per probe in the state database (monitor.state.history)."""

    enabled: bool = True
    # Raw results per probe: the newest raw_max_per_probe (12 h at 60 s), none older than raw_max_age. 10,000
    # probes every 60 s: a 409 MiB database after a day (bench/history.py); rollups cover longer windows.
    raw_max_per_probe: int = Field(default=720, ge=10, le=1_000_000)
    raw_max_age: Duration = 7 * 86400.0
    hourly_max_age: Duration = 8 * 86400.0  # hourly rollups: runs, failures, latency percentiles
    daily_max_age: Duration = 400 * 86400.0
    changes_max_per_probe: int = Field(default=200, ge=1, le=1_000_000)  # status changes (ok <-> failed)
    changes_max_age: Duration = 400 * 86400.0
    flush_interval: Duration = 5.0  # seconds between batched writes (sooner at batch_rows queued results)
    batch_rows: int = Field(default=1000, ge=1, le=1_000_000)
    retention_interval: Duration = 600.0  # seconds between passes of the age limits


class DnsConfig(_Strict):
    nameservers: list[str] = []
    timeout: Duration = 5.0

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, values: list[str]) -> list[str]:
        for value in values:
            host, _ = split_host_port(value, 53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"nameserver {value!r} must be an IP address") from None
        return values

    def nameserver_addresses(self) -> list[tuple[str, int]]:
        out = []
        for value in self.nameservers:
            host, port = split_host_port(value, 53)
            out.append((host, port or 53))
        return out


def _check_host_pattern(value: Any) -> Any:
    """`mail.example.org` (that name only) or `.example.org` (every name below example.org)."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    below = text.startswith(".")
    name = _check_hostname(text[1:] if below else text)
    if _MAYBE_IP.fullmatch(name):
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"{value!r} is an address: list it under networks")
    return f".{name}" if below else name


HostPattern = Annotated[str, BeforeValidator(_check_host_pattern)]


class ProbeAllow(_Strict):
    """The targets /probe may reach; every other one is refused (403) before any DNS lookup or connection.

    A name must match `hosts`; when `networks` is set, every address it resolves to must lie in them
    too (so that DNS cannot point an allowed name at 127.0.0.1). An address must lie in `networks`."""

    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    hosts: list[HostPattern] = []
    ports: list[Port] = Field(default=[25, 465, 587], min_length=1)


class ProbeRateLimit(_Strict):
    """A token bucket over every /probe that passes the allow-list: `rate` per second, `burst` at once."""

    rate: float = Field(default=10.0, gt=0, le=10_000)
    burst: int = Field(default=20, ge=1, le=10_000)


class ProbeEndpointConfig(_Strict):
    """`/probe?target=...` for ad-hoc probes, blackbox_exporter style; off unless enabled."""

    enabled: bool = False
    max_concurrency: int = Field(default=10, ge=1, le=1000)
    timeout: Duration = 10.0
    allow: ProbeAllow = ProbeAllow()
    rate_limit: ProbeRateLimit = ProbeRateLimit()

    @model_validator(mode="after")
    def _allow_needed(self) -> ProbeEndpointConfig:
        if self.enabled and not (self.allow.networks or self.allow.hosts):
            raise ValueError("an enabled /probe needs allow.networks or allow.hosts: it probes only what they list")
        return self


class HttpLimits(_Strict):
    """Bounds on HTTP connections, so that slow, idle or silent clients cannot hold the agent's descriptors."""

    # Connections at once; at the bound a new one displaces the oldest that has no request running.
    max_connections: int = Field(default=256, ge=1, le=65_536)
    header_timeout: Duration = 10.0  # from connect to the complete request headers of the first request
    idle_timeout: Duration = 15.0  # keep-alive: from a response to the complete headers of the next request
    send_timeout: Duration = 60.0  # writing one /metrics response to a client that reads it slowly


def _http_listen(value: str | None) -> str | None:
    """An HTTP listen address: host:port, the port required."""
    if value is not None:
        _, port = split_host_port(value, None)
        if port is None:
            raise ValueError(f"listen address {value!r} needs a port")
    return value


def _http_address(listen: str | None) -> tuple[str, int] | None:
    """(host, port) of a listen address _http_listen accepted; None when there is none."""
    if listen is None:
        return None
    host, port = split_host_port(listen, None)
    assert port is not None
    return host, port


class PrometheusConfig(_Strict):
    listen: str | None = "127.0.0.1:9465"
    http: HttpLimits = HttpLimits()
    probe_endpoint: ProbeEndpointConfig = ProbeEndpointConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _http_listen(value)

    def address(self) -> tuple[str, int] | None:
        return _http_address(self.listen)


class StatusPageConfig(_Strict):
    """The read-only status page (HTML and /api JSON): on the Prometheus HTTP server at `/` unless
    `listen` gives it an address of its own (e.g. one only a reverse proxy with authentication reaches)."""

    enabled: bool = True
    listen: str | None = None
    per_page: int = Field(default=100, ge=10, le=1000)  # overview rows per page: 10,000 probes stay usable

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _http_listen(value)

    def address(self) -> tuple[str, int] | None:
        return _http_address(self.listen)


AuthProtocol = Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["des", "aes128", "aes192", "aes256"]


def _v3_password_length(value: Secret) -> Secret:
    if value.value is not None and len(value.value.get_secret_value()) < 8:
        raise ValueError("SNMPv3 passwords need at least 8 characters (RFC 3414)")
    return value


V3Password = Annotated[SecretField, AfterValidator(_v3_password_length)]


class SnmpAuth(_Strict):
    protocol: AuthProtocol = "sha256"
    password: V3Password


class SnmpPriv(_Strict):
    protocol: PrivProtocol = "aes128"
    password: V3Password


class SnmpCommunity(_Strict):
    name: SecretField
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []


class SnmpUser(_Strict):
    name: str = Field(min_length=1, max_length=32)
    auth: SnmpAuth
    priv: SnmpPriv | None = None


class SnmpNotify(_Strict):
    host: Hostname
    port: Port = 162
    version: Literal["1", "2c", "3"] = "2c"
    type: Literal["trap", "inform"] = "trap"
    community: SecretField | None = None
    user: str | None = None
    auth: SnmpAuth | None = None
    priv: SnmpPriv | None = None
    timeout: Duration = 5.0
    retries: int = Field(default=3, ge=0, le=20)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _credentials(self) -> SnmpNotify:
        if self.version == "3":
            if not self.user or self.auth is None:
                raise ValueError("an SNMPv3 receiver needs user and auth")
        elif self.community is None:
            raise ValueError(f"an SNMPv{self.version} receiver needs community")
        if self.version == "1" and self.type == "inform":
            raise ValueError("SNMPv1 has no informs: use version 2c or 3")
        return self


class SnmpConfig(_Strict):
    enabled: bool = True
    listen: list[str] = ["udp:0.0.0.0:161"]
    communities: list[SnmpCommunity] = []
    users: list[SnmpUser] = []
    notify: list[SnmpNotify] = []
    engine_id: str | None = None  # hex; generated and kept in state_dir when absent
    location: Location | None = None  # sysLocation.0; None: agent.location
    # snmpTrapAddress.0 (RFC 3584) in every notification: the IPv4 address receivers know the agent by.
    # None: the source address of the notifier's socket toward each receiver (0.0.0.0 toward an IPv6 one).
    trap_address: ipaddress.IPv4Address | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_snmp_listen(value)
        return values

    @field_validator("engine_id")
    @classmethod
    def _engine_id(cls, value: str | None) -> str | None:
        if value is not None:
            text = value.removeprefix("0x")
            if not re.fullmatch(r"([0-9A-Fa-f]{2}){5,32}", text):
                raise ValueError("engine_id must be 5 to 32 bytes of hex")
        return value

    def listen_addresses(self) -> list[tuple[str, str, int]]:
        return [parse_snmp_listen(v) for v in self.listen]


def parse_snmp_listen(value: str) -> tuple[str, str, int]:
    """`udp:0.0.0.0:161`, `udp6:[::]:161`, `127.0.0.1:1161` to (transport, host, port)."""
    transport = "udp"
    text = value
    for prefix in ("udp6:", "udp:"):
        if value.startswith(prefix):
            transport, text = prefix[:-1], value[len(prefix) :]
            break
    host, port = split_host_port(text, 161)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"SNMP listen address {value!r} must be an IP address") from None
    if addr.version == 6:
        transport = "udp6"
    assert port is not None
    return transport, host, port


TlsVersionName = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
_ADDRESS = re.compile(r"^[^\s<>@]+@[^\s<>@]+$|^$")


def _check_mailbox(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"bad mail address {value!r}: use local@domain (or '' for the null sender)")
    return value


Mailbox = Annotated[str, AfterValidator(_check_mailbox)]


def _check_reply_expectation(value: Any) -> Any:
    """250, "250", "2xx" or "5xx": a reply code or class."""
    text = str(value)
    if not re.fullmatch(r"[2-5](\d\d|xx)", text):
        raise ValueError(f"bad reply expectation {value!r}: use a code like 250 or a class like 2xx")
    return text


ReplyExpectation = Annotated[str, BeforeValidator(_check_reply_expectation)]


class SmtpAuthConfig(_Strict):
    """An AUTH test: done over TLS only, the credentials never leave the dialogue."""

    mechanism: Literal["PLAIN", "LOGIN"] | None = None  # None: whichever the server offers
    username: str = Field(min_length=1)
    password: SecretField


class EnvelopeConfig(_Strict):
    """MAIL FROM / RCPT TO then RSET: no DATA, no mail is ever sent."""

    mail_from: Mailbox
    rcpt_to: list[Mailbox] = Field(min_length=1)
    expect: ReplyExpectation = "250"  # what each RCPT must get


class RelayTestConfig(_Strict):
    """RCPT to a domain the server must not relay for; acceptance is an open relay."""

    mail_from: Mailbox = "monitor@smtp-monitor.invalid"
    rcpt_to: Mailbox


class SpoofTestConfig(_Strict):
    """An MX check's spoof test (monitor.probes.spoof): to every address of every exchange, a message
    forged in the protected domain (MAIL FROM and From:), as an outsider would send it. Only for
    domains and recipients you own: an exchange that accepts it delivers it to `recipient`."""

    recipient: Mailbox = Field(min_length=3)  # a mailbox of yours the exchanges accept mail for
    mail_from: Mailbox | None = None  # default: spoof-test@<domain>; must be in the protected domain
    # a delivery probe whose mailbox receives `recipient`'s mail: an accepted forgery is looked for
    # there (folder, Authentication-Results) and deleted
    mailbox: str | None = Field(default=None, min_length=1, max_length=100)
    wait: Duration = 30.0  # how long an accepted forgery is looked for in that mailbox
    # The agent's addresses as the exchanges see them, when NAT hides them (the socket's local address is
    # a private one): SPF is evaluated for the one of the connection's family. Unset: the socket's address.
    public_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(default=[], max_length=2)
    # the named delivery probe, resolved when the whole config is validated (Config)
    _delivery: DeliveryProbeConfig | None = PrivateAttr(default=None)

    @property
    def delivery(self) -> DeliveryProbeConfig | None:
        return self._delivery


class SmtpProbeConfig(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    host: Hostname
    port: Port | None = None
    tls: TlsMode = "starttls"
    interval: Duration | None = None
    timeout: Duration | None = None
    alert_after: int | None = Field(default=None, ge=1)
    ca_file: CaFile | None = None
    servername: Hostname | None = None
    helo: Hostname | None = None
    verify: bool = True
    cert_warn_days: int | None = Field(default=None, ge=0)
    expect_banner: str | None = None  # a regular expression searched in the greeting
    expect_extensions: list[str] = []
    tls_min_version: TlsVersionName | None = None
    auth: SmtpAuthConfig | None = None
    envelope: EnvelopeConfig | None = None
    relay_test: RelayTestConfig | None = None
    address_family: Literal["any", "ipv4", "ipv6", "both"] = "any"  # both: every A and AAAA address
    source_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    keep_chain: bool = False  # keep the presented chain's DER in the result (set by DANE checks)

    @field_validator("expect_banner")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from None
        return value

    @field_validator("expect_extensions")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.upper() for v in values]

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> SmtpProbeConfig:
        if self.auth is not None and self.tls == "none":
            raise ValueError("auth is tested over TLS only: set tls to starttls or implicit")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_SMTP_PORTS[self.tls]


# Spamhaus's return codes for a query it refuses (RFC 5782 gives none): 127.255.255.252 a typo in the
# zone name, .254 a query through a public or open resolver, .255 too many queries; .253 is in the same
# error block. Never a listing, whichever zone answers them.
DNSBL_ERROR_CODES = ("127.255.255.252", "127.255.255.253", "127.255.255.254", "127.255.255.255")


class DnsblZoneConfig(_Strict):
    """One DNS blocklist (RFC 5782) an MX check looks its exchanges' addresses up in; a plain string is
    the zone name with the defaults. No zone is on by default: the big lists need a key or refuse
    queries through public resolvers (which is what error_codes tell apart from a listing)."""

    zone: Hostname
    # A answers meaning "query refused / over quota / public resolver": the check's error, never a listing
    # (127.0.0.1 always is one, RFC 5782 5)
    error_codes: list[ipaddress.IPv4Address] = Field(
        default=[ipaddress.IPv4Address(code) for code in DNSBL_ERROR_CODES], max_length=32
    )

    @model_validator(mode="before")
    @classmethod
    def _zone_name(cls, value: Any) -> Any:
        return {"zone": value} if isinstance(value, str) else value


class MxCheckConfig(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    domain: Hostname
    expect: list[Hostname] = []
    require_mx: bool = False
    interval: Duration | None = None
    timeout: Duration | None = None
    alert_after: int | None = Field(default=None, ge=1)
    # false: no SMTP probes; true: each exchange's first address; all_addresses: every A and AAAA
    probe_hosts: bool | Literal["all_addresses"] = False
    port: Port = 25
    tls: TlsMode = "starttls"
    ca_file: CaFile | None = None
    verify: bool = True
    dnssec: Literal["off", "report", "require"] = "report"
    dane: Literal["off", "report", "verify"] = "off"
    mta_sts: Literal["off", "report", "verify"] = "off"
    mta_sts_port: Port = 443  # where the policy host listens; only tests move it
    mta_sts_ca_file: CaFile | None = None  # CA bundle for the policy host (default: system CAs)
    reverse_dns: Literal["off", "report", "require"] = "off"
    spoof_test: SpoofTestConfig | None = None  # off unless configured: it sends a forged message
    spf: bool = False
    dmarc: bool = False
    # with spf/dmarc: SPF evaluated recursively (lookup limits, loops), DMARC policy and report destinations
    policy_depth: bool = True
    tls_rpt: bool = False  # the _smtp._tls TXT record (RFC 8460)
    dnsbl: list[DnsblZoneConfig] = Field(default=[], max_length=20)  # every exchange address in each zone
    dnsbl_timeout: Duration = Field(default=3.0, gt=0, le=60)  # per DNSBL query

    # Fields added after the state database began keying saved states by the config's JSON
    # (monitor.state.persistence.config_hash): left out of that JSON at their defaults, so an unchanged
    # check keeps its saved state across the upgrade instead of starting afresh.
    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("policy_depth", "tls_rpt", "dnsbl", "dnsbl_timeout", "spoof_test")

    @model_serializer(mode="wrap")
    def _without_later_defaults(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = fields_of(self)
        for name in self._ADDED_LATER:
            field = type(self).model_fields.get(name)
            if field is None or name not in data:
                continue
            if getattr(self, name) == field.get_default(call_default_factory=True):
                del data[name]
        return data

    @field_validator("probe_hosts", mode="before")
    @classmethod
    def _probe_hosts(cls, value: Any) -> Any:
        if value in ("true", "yes", "first"):
            return True
        if value in ("false", "no", "off"):
            return False
        return value

    @model_validator(mode="after")
    def _dane_needs_starttls(self) -> MxCheckConfig:
        if self.dane != "off" and (not self.probe_hosts or self.tls != "starttls"):
            raise ValueError("dane needs probe_hosts (true or all_addresses) and tls: starttls")
        return self

    @model_validator(mode="after")
    def _spoof_sender_in_domain(self) -> MxCheckConfig:
        spoof = self.spoof_test
        if spoof is not None and spoof.mail_from is not None:
            sender_domain = spoof.mail_from.rpartition("@")[2].lower().rstrip(".")
            domain = self.domain.lower().rstrip(".")
            if sender_domain != domain and not sender_domain.endswith(f".{domain}"):
                raise ValueError(f"spoof_test.mail_from must be an address in {self.domain}: it forges that domain")
        if spoof is not None and spoof.mailbox is not None and self.timeout is not None and self.timeout <= spoof.wait:
            # the mailbox is watched within the check's deadline: a shorter one would never see the forgery
            raise ValueError("timeout must be longer than spoof_test.wait (the check waits for the mailbox)")
        return self

    @property
    def spoof_sender(self) -> str:
        """The forged MAIL FROM and From: of the spoof test."""
        spoof = self.spoof_test
        if spoof is not None and spoof.mail_from is not None:
            return spoof.mail_from
        return "spoof-test@" + self.domain.rstrip(".")


DEFAULT_SUBMIT_PORTS = {"none": 587, "starttls": 587, "implicit": 465}
DEFAULT_MAILBOX_PORTS = {
    ("imap", "implicit"): 993,
    ("imap", "starttls"): 143,
    ("pop3", "implicit"): 995,
    ("pop3", "starttls"): 110,
}
# RFC 8601 result values; "policy" and the rest as registered by IANA
AuthVerdictName = Literal["pass", "fail", "none", "neutral", "softfail", "temperror", "permerror", "policy"]
# Headers the probe writes itself: extra_headers may not replace them.
_PROBE_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "precedence",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "x-smtp-monitor-probe",
        "x-smtp-monitor-token",
    }
)
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext, within one folded line


class DeliverySubmitConfig(_Strict):
    """Where a delivery probe hands its message over: a submission server (MSA, AUTH over TLS), or
    `via: mx`, the recipient domain's exchanges in MX preference order, as an MTA would."""

    via: Literal["submission", "mx"] = "submission"
    host: Hostname | None = None  # submission only: the MX records name the hosts of via: mx
    port: Port | None = None  # submission: 587 (starttls) or 465 (implicit); mx: 25 (tests move it)
    tls: TlsMode = "starttls"
    auth: SmtpAuthConfig | None = None
    ca_file: CaFile | None = None
    servername: Hostname | None = None  # the name the certificate must carry (default: the host)
    helo: Hostname | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _shape(self) -> DeliverySubmitConfig:
        if self.via == "submission" and self.host is None:
            raise ValueError("via: submission needs host")
        if self.via == "mx" and self.host is not None:
            raise ValueError("via: mx takes its hosts from the recipient domain's MX records: drop host")
        if self.via == "mx" and self.auth is not None:
            raise ValueError("via: mx does not authenticate (an MX takes mail for its domain without AUTH)")
        if self.auth is not None and self.tls == "none":
            raise ValueError("auth is sent over TLS only: set tls to starttls or implicit")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 25 if self.via == "mx" else DEFAULT_SUBMIT_PORTS[self.tls]


class MailboxFoldersConfig(_Strict):
    inbox: str = Field(default="INBOX", min_length=1, max_length=200)
    junk: str | None = Field(default=None, min_length=1, max_length=200)  # None: the SPECIAL-USE \Junk folder

    @field_validator("inbox", "junk")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("a folder name is printable text")
        return value


class DeliveryMailboxConfig(_Strict):
    """The mailbox the probe's message must land in, read over IMAP or POP3 with TLS."""

    protocol: Literal["imap", "pop3"] = "imap"
    host: Hostname
    port: Port | None = None  # imap 993/143, pop3 995/110 by tls
    tls: Literal["implicit", "starttls"] = "implicit"
    username: str = Field(min_length=1, max_length=256)
    password: SecretField
    ca_file: CaFile | None = None
    servername: Hostname | None = None
    verify: bool = True
    folders: MailboxFoldersConfig = MailboxFoldersConfig()
    poll_interval: Duration = 2.0  # between searches without IDLE, for POP3 and for the junk folder

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("the username is printable text")
        return value

    @model_validator(mode="after")
    def _folders(self) -> DeliveryMailboxConfig:
        if self.protocol == "pop3" and self.folders != MailboxFoldersConfig():
            raise ValueError("folders are IMAP only: POP3 reads the inbox")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_MAILBOX_PORTS[(self.protocol, self.tls)]


class DeliveryTimeouts(_Strict):
    submit: Duration = 30.0  # the whole SMTP dialogue, per exchange with via: mx
    mailbox: Duration = 10.0  # each mailbox step: connect, TLS, login, one command
    cleanup: Duration = 10.0  # deleting the probe's message and logging out


class ExpectAuthConfig(_Strict):
    """Verdicts the receiving side's Authentication-Results must carry (unset: not checked)."""

    spf: AuthVerdictName | None = None
    dkim: AuthVerdictName | None = None
    dmarc: AuthVerdictName | None = None


class DeliveryProbeConfig(_Strict):
    """End to end: submit a probe message, wait for it in a mailbox, read its headers, delete it."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    submit: DeliverySubmitConfig
    mail_from: Mailbox = Field(alias="from", min_length=3)
    to: Mailbox = Field(min_length=3)
    mailbox: DeliveryMailboxConfig
    deliver_within: Duration = 60.0  # not in the mailbox by then: the run fails as late
    lost_after: Duration = 3600.0  # a pending message older than this is lost (runs across restarts)
    interval: Duration | None = None
    alert_after: int | None = Field(default=None, ge=1)
    timeouts: DeliveryTimeouts = DeliveryTimeouts()
    expect_auth: ExpectAuthConfig = ExpectAuthConfig()
    expect_folder: Literal["inbox", "junk"] | None = None
    # Whose Authentication-Results count (RFC 8601 authserv-id); unset: the topmost header's.
    authserv_id: str | None = Field(default=None, min_length=1, max_length=253)
    # Extra message headers, for testing the receiving side's filtering rules (a Sieve rule that files
    # a header into Junk, say); not needed to monitor delivery.
    extra_headers: dict[str, str] = {}
    # the sending addresses of the message's Received hops, each looked up in these zones (a fact, no failure)
    dnsbl: list[DnsblZoneConfig] = Field(default=[], max_length=20)
    dnsbl_timeout: Duration = Field(default=3.0, gt=0, le=60)  # per DNSBL query
    # Public addresses only by default: looking up an internal relay's private address tells the list's
    # operator the inside of the mail system and lists nothing.
    dnsbl_private_hops: bool = False

    # As MxCheckConfig._ADDED_LATER: an unchanged probe keeps its saved state (config hash) across the upgrade.
    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("dnsbl", "dnsbl_timeout", "dnsbl_private_hops")

    @model_serializer(mode="wrap")
    def _without_later_defaults(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = fields_of(self)
        for name in self._ADDED_LATER:
            field = type(self).model_fields.get(name)
            if field is not None and name in data and getattr(self, name) == field.get_default():
                del data[name]
        return data

    @field_validator("extra_headers")
    @classmethod
    def _extra_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"bad header name {name!r}")
            if name.lower() in _PROBE_HEADERS:
                raise ValueError(f"{name} is written by the probe itself")
            if not value.isprintable() or len(value) > 900:
                raise ValueError(f"header {name}: the value is one line of printable text, at most 900 characters")
        return headers

    @model_validator(mode="after")
    def _deadlines(self) -> DeliveryProbeConfig:
        if self.lost_after <= self.deliver_within:
            raise ValueError("lost_after must be longer than deliver_within")
        if self.submit.via == "mx" and "@" not in self.to:
            raise ValueError("via: mx needs a recipient address with a domain")
        return self

    @property
    def recipient_domain(self) -> str:
        return self.to.rpartition("@")[2]


class Config(_Strict):
    agent: AgentConfig = AgentConfig()
    defaults: Defaults = Defaults()
    dns: DnsConfig = DnsConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    status_page: StatusPageConfig = StatusPageConfig()
    snmp: SnmpConfig = SnmpConfig()
    history: HistoryConfig = HistoryConfig()
    smtp: list[SmtpProbeConfig] = []
    mx: list[MxCheckConfig] = []
    delivery: list[DeliveryProbeConfig] = []

    @model_validator(mode="after")
    def _spoof_mailboxes(self) -> Config:
        """Each spoof test's `mailbox` names a delivery probe: its config travels with the MX check's."""
        deliveries = {probe.name: probe for probe in self.delivery}
        for i, check in enumerate(self.mx):
            spoof = check.spoof_test
            if spoof is None or spoof.mailbox is None:
                continue
            found = deliveries.get(spoof.mailbox)
            if found is None:
                raise ValueError(f"mx[{i}].spoof_test.mailbox: no delivery probe named {spoof.mailbox!r}")
            spoof._delivery = found
        return self

    def duplicate_names(self) -> list[str]:
        """Probe names are unique across smtp, mx and delivery: they index metrics and MIB rows."""
        seen: dict[str, str] = {}
        problems = []
        named: list[tuple[str, SmtpProbeConfig | MxCheckConfig | DeliveryProbeConfig]] = [
            *((f"smtp[{i}]", e) for i, e in enumerate(self.smtp)),
            *((f"mx[{i}]", e) for i, e in enumerate(self.mx)),
            *((f"delivery[{i}]", e) for i, e in enumerate(self.delivery)),
        ]
        for where, entry in named:
            if entry.name in seen:
                problems.append(f"{where}.name: duplicate probe name {entry.name!r} (also {seen[entry.name]})")
            seen[entry.name] = where
        return problems

    def check_secrets(self) -> list[str]:
        """Read every file/env secret now, so a missing one is a load-time error."""
        problems = []
        found = [
            found_secret
            for name in _secret_fields(type(self))
            for found_secret in _walk_secrets(name, getattr(self, name), self)
        ]
        for path, secret, owner in found:
            try:
                revealed = secret.reveal()
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
                continue
            # The length check on the field sees inline values only, so a short one from file/env
            # passed check-config. RFC 3414's minimum is SNMPv3's: SMTP AUTH passwords have none.
            if isinstance(owner, SnmpAuth | SnmpPriv) and len(revealed) < 8:
                problems.append(f"{path}: SNMPv3 passwords need at least 8 characters (RFC 3414)")
        return problems


def _walk_secrets(
    path: str, value: Any, owner: BaseModel | None = None
) -> Iterator[tuple[str, Secret, BaseModel | None]]:
    """Each Secret under `value` with its key path and the model whose field holds it."""
    if isinstance(value, Secret):
        yield path, value, owner
    elif isinstance(value, BaseModel):
        for name in _secret_fields(type(value)):
            field = getattr(value, name)
            if field is not None:
                yield from _walk_secrets(f"{path}.{name}", field, value)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_secrets(f"{path}[{i}]", item, owner)


@functools.cache
def _secret_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that can hold a Secret: 10,000 probes are walked through `auth` alone."""
    return tuple(name for name, field in model.model_fields.items() if _may_hold_secret(field.annotation))


def _may_hold_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return issubclass(annotation, Secret) or bool(_secret_fields(annotation))
    # unions, list[...], Annotated[...]: their arguments; Literal's are values, never types
    return any(_may_hold_secret(arg) for arg in get_args(annotation))


# pydantic names union members in error locations; `lax-or-strict[...]` (the IPv4/IPv6
# network union of `allow`) was missing and printed as part of the key path.
_INTERNAL_LOC_PREFIXES = ("function-", "tagged-union", "lax-or-strict[", "json-or-python[", "is-instance[")


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(_INTERNAL_LOC_PREFIXES) or part in {"str", "int", "float"}:
            continue  # pydantic's internal validator names are not keys
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def format_validation_error(path: Path | str, exc: ValidationError) -> str:
    # One line per key path: a union (e.g. allow: IPv4 or IPv6 network) fails once per member.
    problems: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        messages = problems.setdefault(_key_path(tuple(err["loc"])), [])
        if msg not in messages:
            messages.append(msg)
    return "\n".join(f"{path}: {key}: {'; '.join(msgs)}" for key, msgs in problems.items())


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate an already parsed document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    problems = config.duplicate_names() + config.check_secrets()
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return config


def load_config(path: Path | str) -> Config:
    """Read, parse and validate a YAML config file; every failure is a ConfigError."""
    return parse_config(read_document(path), str(path))
