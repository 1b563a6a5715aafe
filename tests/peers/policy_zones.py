"""Test zones for the policy-depth and DNSBL checks: SPF records over the limits, loops, DMARC report
destinations with and without authorisation, TLS-RPT records, and a DNSBL zone answering every kind
of code. Served by NSD (tests.peers.nsd.NsdServer) under the reserved `.test` TLD (RFC 2606)."""

from __future__ import annotations

POLICY_ORIGIN = "pol.test."
DNSBL_ORIGIN = "dnsbl.test."
# Report destinations live in another organizational domain: checkdmarc (by the public suffix list)
# and the agent (by name) both call them external.
REPORTS_ORIGIN = "rep.test."
DNSBL_ZONE = "dnsbl.test"
TTL = 300

# The one exchange every policy domain points at; its addresses are on no list.
CLEAN_MX = "mx.clean.pol.test."
CLEAN_V4 = "127.0.0.3"
CLEAN_V6 = "::1"

# DNSBL outcomes by exchange address (RFC 5782: 127.0.0.2 is the "listed" test point)
LISTED_V4 = "127.0.0.2"
LISTED_V6 = "::2"
REFUSED_V4 = "127.0.0.4"  # the zone answers Spamhaus's "public resolver" code
UNEXPECTED_V4 = "127.0.0.5"  # the zone answers outside 127/8 (a wildcard or hijacking resolver)
QUERY_REFUSED_V4 = "127.0.0.6"  # the zone answers 127.0.0.1 (RFC 5782 5: never a listing)
LISTED_REASON = "listed for testing: https://dnsbl.test/lookup?127.0.0.2"
DNSBL_A: dict[str, tuple[str, ...]] = {
    "2.0.0.127": ("127.0.0.2", "127.0.0.4"),
    "4.0.0.127": ("127.255.255.254",),
    "5.0.0.127": ("192.0.2.99",),
    "6.0.0.127": ("127.0.0.1",),
    # ::2 reversed by nibble (RFC 5782 2.4)
    ".".join(reversed("0" * 31 + "2")): ("127.0.0.10",),
}
DNSBL_TXT: dict[str, str] = {"2.0.0.127": LISTED_REASON, ".".join(reversed("0" * 31 + "2")): "v6 listing"}

# One MX check domain per DNSBL outcome, each with one exchange.
DNSBL_DOMAINS: dict[str, tuple[str, ...]] = {
    "listed.pol.test": (LISTED_V4, LISTED_V6),
    "clean.pol.test": (CLEAN_V4, CLEAN_V6),
    "refused.pol.test": (REFUSED_V4,),
    "unexpected.pol.test": (UNEXPECTED_V4,),
    "queryrefused.pol.test": (QUERY_REFUSED_V4,),
}

REPORTS = "reports.rep.test"  # an external DMARC report destination with MX records
NOMX_REPORTS = "nomx.rep.test"  # a destination that authorises everyone but has no MX

# name -> TXT strings (each a whole record)
POLICY_TXT: dict[str, tuple[str, ...]] = {
    # sound: an include within the limits, p=reject, reports to itself, a valid TLS-RPT record
    "sound.pol.test": ("v=spf1 include:_spf.sound.pol.test mx -all",),
    "_spf.sound.pol.test": ("v=spf1 ip4:192.0.2.0/24 -all",),
    "_dmarc.sound.pol.test": ("v=DMARC1; p=reject; rua=mailto:dmarc@sound.pol.test",),
    "_smtp._tls.sound.pol.test": ("v=TLSRPTv1; rua=mailto:tls@sound.pol.test,https://reports.pol.test/tlsrpt",),
    # 11 includes: one lookup over the limit of 10 (RFC 7208 4.6.4)
    "toomany.pol.test": ("v=spf1 " + " ".join(f"include:i{n}.toomany.pol.test" for n in range(1, 12)) + " -all",),
    **{f"i{n}.toomany.pol.test": ("v=spf1 ip4:192.0.2.1 -all",) for n in range(1, 12)},
    "_dmarc.toomany.pol.test": ("v=DMARC1; p=quarantine",),
    "_smtp._tls.toomany.pol.test": ("v=TLSRPTv1; rua=ftp://reports.pol.test/",),
    # 10 lookups exactly, through nested includes: at the limit, still fine
    "tenlookups.pol.test": ("v=spf1 include:n1.tenlookups.pol.test -all",),
    **{f"n{n}.tenlookups.pol.test": (f"v=spf1 include:n{n + 1}.tenlookups.pol.test -all",) for n in range(1, 10)},
    "n10.tenlookups.pol.test": ("v=spf1 ip4:192.0.2.2 -all",),
    # three names that do not exist: three void lookups, one over the limit of 2
    "void.pol.test": ("v=spf1 a:gone1.void.pol.test a:gone2.void.pol.test exists:gone3.void.pol.test -all",),
    # include and redirect loops
    "loop.pol.test": ("v=spf1 include:back.loop.pol.test -all",),
    "back.loop.pol.test": ("v=spf1 include:loop.pol.test -all",),
    "redirloop.pol.test": ("v=spf1 redirect=r.redirloop.pol.test",),
    "r.redirloop.pol.test": ("v=spf1 redirect=redirloop.pol.test",),
    # an include target without SPF record (a permerror), and one with two
    "missing.pol.test": ("v=spf1 include:nospf.pol.test -all",),
    "nospf.pol.test": ("just some text",),
    "twice.pol.test": ("v=spf1 include:two.pol.test -all",),
    "two.pol.test": ("v=spf1 -all", "v=spf1 ip4:192.0.2.3 -all"),
    # ptr: RFC 7208 5.5 says do not use it
    "ptr.pol.test": ("v=spf1 ptr -all",),
    # DMARC: no enforcement, external destinations with and without authorisation, one without MX
    "none.pol.test": ("v=spf1 -all",),
    "_dmarc.none.pol.test": ("v=DMARC1; p=none; sp=none; pct=50",),
    "extauth.pol.test": ("v=spf1 -all",),
    "_dmarc.extauth.pol.test": (f"v=DMARC1; p=reject; rua=mailto:agg@{REPORTS}; ruf=mailto:forensic@{REPORTS}",),
    f"extauth.pol.test._report._dmarc.{REPORTS}": ("v=DMARC1",),
    "extnoauth.pol.test": ("v=spf1 -all",),
    "_dmarc.extnoauth.pol.test": (f"v=DMARC1; p=reject; rua=mailto:agg@{REPORTS}",),
    "nomx.pol.test": ("v=spf1 -all",),
    "_dmarc.nomx.pol.test": (f"v=DMARC1; p=reject; rua=mailto:agg@{NOMX_REPORTS}",),
    f"*._report._dmarc.{NOMX_REPORTS}": ("v=DMARC1",),
}
POLICY_DOMAINS = (
    "sound.pol.test",
    "toomany.pol.test",
    "tenlookups.pol.test",
    "void.pol.test",
    "loop.pol.test",
    "redirloop.pol.test",
    "missing.pol.test",
    "twice.pol.test",
    "ptr.pol.test",
    "none.pol.test",
    "extauth.pol.test",
    "extnoauth.pol.test",
    "nomx.pol.test",
)
# the domains above without a DMARC record of their own get this one
DEFAULT_DMARC = "v=DMARC1; p=reject"


def _soa(origin: str) -> list[str]:
    return [
        f"$ORIGIN {origin}",
        f"$TTL {TTL}",
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {TTL}",
        f"@ IN NS ns.{origin}",
        f"ns IN A {CLEAN_V4}",
    ]


def _txt(name: str, text: str) -> str:
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return f"{name}. IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def policy_zone_text() -> str:
    lines = _soa(POLICY_ORIGIN)
    lines += [f"{CLEAN_MX} IN A {CLEAN_V4}", f"{CLEAN_MX} IN AAAA {CLEAN_V6}"]
    for domain in POLICY_DOMAINS:
        lines.append(f"{domain}. IN MX 10 {CLEAN_MX}")
        if f"_dmarc.{domain}" not in POLICY_TXT:
            lines.append(_txt(f"_dmarc.{domain}", DEFAULT_DMARC))
    for domain, addresses in DNSBL_DOMAINS.items():
        exchange = f"mx.{domain}."
        lines.append(f"{domain}. IN MX 10 {exchange}")
        lines += [f"{exchange} IN {'AAAA' if ':' in a else 'A'} {a}" for a in addresses]
    for name, texts in POLICY_TXT.items():
        if not name.endswith(REPORTS_ORIGIN.rstrip(".")):
            lines += [_txt(name, text) for text in texts]
    return "\n".join(lines) + "\n"


def reports_zone_text() -> str:
    lines = _soa(REPORTS_ORIGIN)
    lines.append(f"{REPORTS}. IN MX 10 {CLEAN_MX}")
    lines.append(f"{NOMX_REPORTS}. IN A {CLEAN_V4}")  # an address, but no MX: checkdmarc and the agent both warn
    for name, texts in POLICY_TXT.items():
        if name.endswith(REPORTS_ORIGIN.rstrip(".")):
            lines += [_txt(name, text) for text in texts]
    return "\n".join(lines) + "\n"


def dnsbl_zone_text() -> str:
    lines = _soa(DNSBL_ORIGIN)
    for name, codes in DNSBL_A.items():
        lines += [f"{name} IN A {code}" for code in codes]
    for name, text in DNSBL_TXT.items():
        lines.append(f'{name} IN TXT "{text}"')
    return "\n".join(lines) + "\n"


def policy_zones() -> dict[str, str]:
    """{origin: zone text} for NsdServer."""
    return {POLICY_ORIGIN: policy_zone_text(), DNSBL_ORIGIN: dnsbl_zone_text(), REPORTS_ORIGIN: reports_zone_text()}
