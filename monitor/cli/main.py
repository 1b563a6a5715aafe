"""Command line: one-shot `probe`, `mx` and `deliver`, `check-config`, and the `run` agent."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from monitor import __version__
from monitor.cli import report
from monitor.config.document import ConfigError
from monitor.config.reader import ConfigReader
from monitor.runtime.sharding import Shard, parse_shard

# Each command imports what it needs: `run` forks its config reader before the models load
# (pydantic), and runs its probes in another process (the one-shots import them).
if TYPE_CHECKING:
    from monitor.config.schema import SmtpProbeConfig
    from monitor.probes import ProbeEnv

EXIT_CONFIG = 2  # a bad config file, for check-config and run


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 3 (UNKNOWN), so a mistyped plugin command never reads as CRITICAL."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(report.EXIT_UNKNOWN, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    from monitor.config.schema import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smtp-monitor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"smtp-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("probe", help="probe one SMTP server once (monitoring-plugin style)")
    p.add_argument("target", help="HOST[:PORT]; IPv6 as [::1]:25")
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="starttls")
    p.add_argument("--timeout", type=_duration, default=10.0, help="whole dialogue deadline (default 10s)")
    p.add_argument("--ca-file", type=Path, help="CA bundle to verify against (default: system CAs)")
    p.add_argument("--servername", help="name to verify the certificate for (default: HOST)")
    p.add_argument("--helo", help="name to send in EHLO/HELO (default: this host's FQDN)")
    p.add_argument("--no-verify", action="store_true", help="report the certificate without verifying it")
    p.add_argument("--cert-warn-days", type=int, default=14, help="WARNING when the certificate expires sooner")
    p.add_argument("--nameserver", action="append", default=[], metavar="HOST[:PORT]")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--transcript", action="store_true", help="print the dialogue after the status line (swaks style)")
    checks = p.add_argument_group("checks beyond the handshake")
    checks.add_argument("--expect-banner", metavar="REGEX", help="the greeting must match")
    checks.add_argument(
        "--expect-extension", action="append", default=[], metavar="KEYWORD", help="EHLO must offer it (repeatable)"
    )
    checks.add_argument("--tls-min-version", choices=["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"])
    checks.add_argument("--auth-user", help="test AUTH (over TLS) as this user")
    checks.add_argument("--auth-password-file", type=Path, help="file holding the AUTH password")
    checks.add_argument("--auth-password-env", metavar="VAR", help="environment variable holding the AUTH password")
    checks.add_argument("--auth-mechanism", choices=["PLAIN", "LOGIN"])
    checks.add_argument("--mail-from", metavar="ADDRESS", help="envelope test: MAIL FROM (then RSET; no mail sent)")
    checks.add_argument("--rcpt-to", action="append", default=[], metavar="ADDRESS", help="envelope test recipient")
    checks.add_argument("--rcpt-expect", default="250", metavar="CODE", help="reply each RCPT must get: 250, 5xx, ...")
    checks.add_argument("--relay-test", metavar="ADDRESS", help="an outside recipient that must be refused")
    checks.add_argument(
        "--address-family",
        choices=["any", "ipv4", "ipv6", "both"],
        default="any",
        help="both: probe every A and AAAA address and report each",
    )
    checks.add_argument("--source-address", metavar="IP", help="connect from this local address")

    m = sub.add_parser("mx", help="check one domain's MX records once")
    m.add_argument("domain")
    m.add_argument("--nameserver", action="append", default=[], metavar="HOST[:PORT]")
    m.add_argument("--expect", action="append", default=[], metavar="HOST", help="an expected exchange")
    m.add_argument("--require-mx", action="store_true", help="fail on an implicit MX (no MX record)")
    m.add_argument(
        "--probe-hosts",
        action="store_const",
        const=True,
        default=False,
        help="also SMTP-probe every exchange (its first address)",
    )
    m.add_argument(
        "--probe-all-addresses",
        dest="probe_hosts",
        action="store_const",
        const="all_addresses",
        help="SMTP-probe every exchange on every A and AAAA address",
    )
    m.add_argument("--dnssec", choices=["off", "report", "require"], default="report")
    m.add_argument("--reverse-dns", choices=["off", "report", "require"], default="off")
    m.add_argument(
        "--dane",
        choices=["off", "report", "verify"],
        default="off",
        help="match each exchange's STARTTLS certificate against its TLSA records (needs host probes)",
    )
    m.add_argument(
        "--mta-sts",
        choices=["off", "report", "verify"],
        default="off",
        help="fetch the MTA-STS policy and check the exchanges against it",
    )
    m.add_argument("--mta-sts-port", type=int, default=443, help=argparse.SUPPRESS)
    m.add_argument("--mta-sts-ca-file", type=Path, help="CA bundle for the MTA-STS policy host")
    m.add_argument("--no-verify", action="store_true", help="host probes: do not verify certificates (PKIX)")
    m.add_argument("--spf", action="store_true", help="check the SPF record: presence, syntax, lookup limits, loops")
    m.add_argument(
        "--dmarc", action="store_true", help="check the DMARC record: presence, syntax, policy, report destinations"
    )
    m.add_argument(
        "--no-policy-depth", action="store_true", help="--spf/--dmarc: presence and syntax only, no recursion"
    )
    m.add_argument("--tls-rpt", action="store_true", help="check the TLS-RPT record (_smtp._tls, RFC 8460)")
    m.add_argument(
        "--dnsbl",
        action="append",
        default=[],
        metavar="ZONE",
        help="look every exchange address up in this DNS blocklist zone (repeatable)",
    )
    m.add_argument(
        "--spoof-test",
        metavar="RECIPIENT",
        help="send every exchange address a message forged in DOMAIN to this mailbox of yours; it must be refused",
    )
    m.add_argument("--spoof-from", metavar="ADDRESS", help="--spoof-test's forged sender (default spoof-test@DOMAIN)")
    m.add_argument("--tls", choices=["none", "starttls", "implicit"], default="starttls")
    m.add_argument("--port", type=int, default=25)
    m.add_argument("--ca-file", type=Path)
    m.add_argument("--timeout", type=_duration, default=10.0)
    m.add_argument("--json", action="store_true")
    m.add_argument("--transcript", action="store_true", help="print each probed exchange's SMTP dialogue")

    d = sub.add_parser("deliver", help="one delivery run: submit a message, wait for it in the mailbox, delete it")
    d.add_argument("probe", type=Path, help="YAML file of one delivery probe (the keys of a delivery: entry)")
    d.add_argument("--nameserver", action="append", default=[], metavar="HOST[:PORT]", help="for via: mx")
    d.add_argument("--json", action="store_true")
    d.add_argument("--transcript", action="store_true", help="print the submission's dialogue and the mailbox commands")

    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("-c", "--config", required=True, type=Path)

    st = sub.add_parser("status", help="every probe's status from the agent's state database")
    st.add_argument("-c", "--config", required=True, type=Path)
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--transcript", metavar="NAME", help="print one probe's saved dialogues: its last failed run's and last run's"
    )

    r = sub.add_parser("run", help="run the monitoring agent")
    r.add_argument("-c", "--config", required=True, type=Path)
    r.add_argument("--log-format", choices=["text", "json"], default="text")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    r.add_argument(
        "--shard",
        type=_shard,
        metavar="INDEX/COUNT",
        help="run only this shard's probes (rendezvous hash of the name); auto/COUNT takes the pod ordinal",
    )
    return parser


def _env(nameservers: list[str], timeout: float) -> ProbeEnv:
    from monitor.config.schema import DnsConfig
    from monitor.probes import ProbeEnv, build_resolver

    dns_config = DnsConfig(nameservers=nameservers, timeout=min(timeout, 5.0))
    return ProbeEnv(resolver=build_resolver(dns_config))


def _probe(args: argparse.Namespace) -> int:
    import asyncio

    from monitor.config.schema import SmtpProbeConfig, split_host_port
    from monitor.model.results import SmtpResult
    from monitor.probes import runners

    host, port = split_host_port(args.target, None)
    settings: dict[str, Any] = {
        "name": "cli",
        "host": host,
        "port": port,
        "tls": args.tls,
        "timeout": args.timeout,
        "ca_file": args.ca_file,
        "servername": args.servername,
        "helo": args.helo,
        "verify": not args.no_verify,
        "expect_banner": args.expect_banner,
        "expect_extensions": args.expect_extension,
        "tls_min_version": args.tls_min_version,
        "address_family": args.address_family,
        "source_address": args.source_address,
    }
    if args.auth_user:
        password = {"file": args.auth_password_file} if args.auth_password_file else {"env": args.auth_password_env}
        settings["auth"] = {"username": args.auth_user, "password": password, "mechanism": args.auth_mechanism}
    if args.mail_from is not None or args.rcpt_to:
        settings["envelope"] = {"mail_from": args.mail_from or "", "rcpt_to": args.rcpt_to, "expect": args.rcpt_expect}
    if args.relay_test:
        settings["relay_test"] = {"rcpt_to": args.relay_test}
    spec = SmtpProbeConfig.model_validate(settings)
    problems = _secret_problems(spec)
    if problems:
        raise ValueError(problems)
    result = asyncio.run(runners.run(spec, _env(args.nameserver, args.timeout)))
    assert isinstance(result, SmtpResult)
    print(report.as_json(result) if args.json else report.smtp_line(result, args.cert_warn_days))
    if args.transcript and not args.json:  # --json carries it already
        print(report.transcript_text(result))
    return report.smtp_exit_code(result, args.cert_warn_days)


def _mx(args: argparse.Namespace) -> int:
    import asyncio

    from monitor.config.schema import MxCheckConfig, SpoofTestConfig
    from monitor.model.results import MxResult
    from monitor.probes import runners

    spec = MxCheckConfig(
        name="cli",
        domain=args.domain,
        expect=args.expect,
        require_mx=args.require_mx,
        probe_hosts=args.probe_hosts,
        tls=args.tls,
        port=args.port,
        ca_file=args.ca_file,
        timeout=args.timeout,
        dnssec=args.dnssec,
        reverse_dns=args.reverse_dns,
        spf=args.spf,
        dmarc=args.dmarc,
        policy_depth=not args.no_policy_depth,
        tls_rpt=args.tls_rpt,
        dnsbl=args.dnsbl,
        dane=args.dane,
        mta_sts=args.mta_sts,
        mta_sts_port=args.mta_sts_port,
        mta_sts_ca_file=args.mta_sts_ca_file,
        verify=not args.no_verify,
        spoof_test=SpoofTestConfig(recipient=args.spoof_test, mail_from=args.spoof_from) if args.spoof_test else None,
    )
    result = asyncio.run(runners.run(spec, _env(args.nameserver, args.timeout)))
    assert isinstance(result, MxResult)
    print(report.as_json(result) if args.json else report.mx_line(result))
    if args.transcript and not args.json:
        print(report.transcript_text(result))
    return report.mx_exit_code(result)


def _deliver(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from monitor.config.document import read_document
    from monitor.config.schema import DeliveryProbeConfig, format_validation_error
    from monitor.model.delivery import DeliveryResult
    from monitor.probes import runners

    try:
        spec = DeliveryProbeConfig.model_validate(read_document(args.probe))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(args.probe, exc)) from None
    for secret in (spec.mailbox.password, *((spec.submit.auth.password,) if spec.submit.auth else ())):
        secret.reveal()  # a missing file or variable is a usage error, not a failed run (ValueError)
    result = asyncio.run(runners.run(spec, _env(args.nameserver, spec.timeouts.submit)))
    assert isinstance(result, DeliveryResult)
    print(report.as_json(result) if args.json else report.delivery_line(result, spec.deliver_within))
    if args.transcript and not args.json:
        print(report.transcript_text(result))
    return report.delivery_exit_code(result)


def _check_config(args: argparse.Namespace) -> int:
    from monitor.config.schema import load_config

    config = load_config(args.config)
    print(f"{args.config}: ok ({len(config.smtp)} SMTP probes, {len(config.mx)} MX checks)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from monitor.cli.status import print_status, print_transcripts
    from monitor.config.schema import load_config

    if args.transcript is not None:
        return print_transcripts(load_config(args.config), args.transcript)
    return print_status(load_config(args.config), as_json=args.json)


def _run(args: argparse.Namespace) -> int:
    gc.disable()  # for the agent's imports too: run_agent keeps it off until the agent has started
    reader = ConfigReader(args.config)  # forks: before any thread starts, and before the imports it overlaps
    from monitor.runtime.agent import run_agent  # the agent's imports are heavy; one-shots skip them

    return run_agent(args.config, log_format=args.log_format, log_level=args.log_level, shard=args.shard, reader=reader)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "probe": _probe,
        "mx": _mx,
        "deliver": _deliver,
        "check-config": _check_config,
        "status": _status,
        "run": _run,
    }
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"smtp-monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # a bad argument value that argparse could not see (e.g. a host name)
        print(f"smtp-monitor: {_first_error_line(exc)}", file=sys.stderr)
        return report.EXIT_UNKNOWN
    except KeyboardInterrupt:
        return 130


def _secret_problems(spec: SmtpProbeConfig) -> str:
    """Read the AUTH password now, so a missing file is a usage error, not a failed probe."""
    if spec.auth is None:
        return ""
    try:
        spec.auth.password.reveal()
    except ValueError as exc:
        return f"auth password: {exc}"
    return ""


def _first_error_line(exc: ValueError) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        return f"{field}: {str(err['msg']).removeprefix('Value error, ')}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
