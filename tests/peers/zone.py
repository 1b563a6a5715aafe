"""The standard test DNS zone (origin `test.`), built from constants that tests can assert against.

One zone with origin `test.` holds every test domain (good.test, nullmx.test, ...),
so a single authoritative server answers for all of them.  `.test` is reserved
(RFC 2606) and never reaches a real resolver.  Names are absolute (trailing dot),
as dnspython prints them.
"""

from __future__ import annotations

ORIGIN = "test."
NS_HOST = "ns.test."
LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"

# good.test: two MX hosts with addresses; mx2 also has IPv6
GOOD_DOMAIN = "good.test."
GOOD_MX1 = "mx1.good.test."
GOOD_MX2 = "mx2.good.test."
GOOD_MX: tuple[tuple[int, str], ...] = ((10, GOOD_MX1), (20, GOOD_MX2))  # preference order

# nullmx.test: RFC 7505 null MX ("MX 0 ."), the domain accepts no mail
NULLMX_DOMAIN = "nullmx.test."

# implicit.test: no MX, only an A record (RFC 5321 implicit MX)
IMPLICIT_DOMAIN = "implicit.test."

# noaddr.test: MX host exists (it has a TXT record) but has no A/AAAA: NOERROR with no answer
NOADDR_DOMAIN = "noaddr.test."
NOADDR_MX_HOST = "host.noaddr.test."

# mail.test: the Postfix test instance's name (its certificate carries DNS:mail.test)
MAIL_HOST = "mail.test."

# dangling.test: MX host lies in a subdomain that does not exist: NXDOMAIN for the host
DANGLING_DOMAIN = "dangling.test."
DANGLING_MX_HOST = "mx.nowhere.dangling.test."

# a name with no records at all in the zone: NXDOMAIN
MISSING_DOMAIN = "missing.test."

# MTA-STS (RFC 8461): good.test publishes a policy id and the policy host mta-sts.good.test;
# multists.test has two STSv1 records (no policy, RFC 8461 3.1); badsts.test a malformed one
GOOD_MTA_STS_TXT = "_mta-sts.good.test."
GOOD_MTA_STS_ID = "20240101T000000"
GOOD_MTA_STS_HOST = "mta-sts.good.test."
MULTISTS_DOMAIN = "multists.test."
BADSTS_DOMAIN = "badsts.test."

MX_RECORDS: dict[str, tuple[tuple[int, str], ...]] = {
    GOOD_DOMAIN: GOOD_MX,
    NULLMX_DOMAIN: ((0, "."),),
    NOADDR_DOMAIN: ((10, NOADDR_MX_HOST),),
    DANGLING_DOMAIN: ((10, DANGLING_MX_HOST),),
}
A_RECORDS: dict[str, tuple[str, ...]] = {
    NS_HOST: (LOOPBACK_V4,),
    GOOD_MX1: (LOOPBACK_V4,),
    GOOD_MX2: (LOOPBACK_V4,),
    IMPLICIT_DOMAIN: (LOOPBACK_V4,),
    MAIL_HOST: (LOOPBACK_V4,),
    GOOD_MTA_STS_HOST: (LOOPBACK_V4,),
}
AAAA_RECORDS: dict[str, tuple[str, ...]] = {
    GOOD_MX2: (LOOPBACK_V6,),
}
TXT_RECORDS: dict[str, tuple[str, ...]] = {
    NOADDR_MX_HOST: ("this name has no address records",),
    GOOD_MTA_STS_TXT: (f"v=STSv1; id={GOOD_MTA_STS_ID};", "not an STS record"),  # ignored by readers
    "_mta-sts." + MULTISTS_DOMAIN: ("v=STSv1; id=one;", "v=STSv1; id=two;"),
    "_mta-sts." + BADSTS_DOMAIN: ("v=STSv1; id=not-alphanumeric;",),
}

TTL = 300
SOA_SERIAL = 1


def standard_zone_text() -> str:
    """Zone file text for ORIGIN with every record in the constants above."""
    lines = [
        f"$ORIGIN {ORIGIN}",
        f"$TTL {TTL}",
        f"@ IN SOA {NS_HOST} hostmaster.{ORIGIN} {SOA_SERIAL} 3600 600 86400 {TTL}",
        f"@ IN NS {NS_HOST}",
    ]
    for name, mxs in MX_RECORDS.items():
        lines += [f"{name} IN MX {pref} {host}" for pref, host in mxs]
    for name, addrs in A_RECORDS.items():
        lines += [f"{name} IN A {addr}" for addr in addrs]
    for name, addrs in AAAA_RECORDS.items():
        lines += [f"{name} IN AAAA {addr}" for addr in addrs]
    for name, texts in TXT_RECORDS.items():
        lines += [f'{name} IN TXT "{text}"' for text in texts]
    return "\n".join(lines) + "\n"


# SPF and DMARC: good.test publishes valid ones, badpolicy.test malformed ones
SPF_GOOD = "v=spf1 mx ip4:127.0.0.0/8 -all"
DMARC_GOOD = "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"
BADPOLICY_DOMAIN = "badpolicy.test."
SPF_BAD = "v=spf1 mx ip4:300.1.2.3 -all"
DMARC_BAD = "v=DMARC1; p=sometimes"
TXT_RECORDS[GOOD_DOMAIN] = (SPF_GOOD,)
TXT_RECORDS["_dmarc." + GOOD_DOMAIN] = (DMARC_GOOD,)
TXT_RECORDS[BADPOLICY_DOMAIN] = (SPF_BAD,)
TXT_RECORDS["_dmarc." + BADPOLICY_DOMAIN] = (DMARC_BAD,)
MX_RECORDS[BADPOLICY_DOMAIN] = ((10, GOOD_MX1),)

# Reverse DNS: 127.0.0.1 points back at mx1.good.test (forward-confirmed); ::1 has no PTR.
REVERSE_ORIGIN = "127.in-addr.arpa."
PTR_RECORDS: dict[str, str] = {"1.0.0.127.in-addr.arpa.": GOOD_MX1}


def reverse_zone_text() -> str:
    lines = [
        f"$ORIGIN {REVERSE_ORIGIN}",
        f"$TTL {TTL}",
        f"@ IN SOA {NS_HOST} hostmaster.{ORIGIN} {SOA_SERIAL} 3600 600 86400 {TTL}",
        f"@ IN NS {NS_HOST}",
    ]
    lines += [f"{name} IN PTR {target}" for name, target in PTR_RECORDS.items()]
    return "\n".join(lines) + "\n"


def standard_zones() -> dict[str, str]:
    """{origin: zone text} for NsdServer: the standard zone and the loopback reverse zone."""
    return {ORIGIN: standard_zone_text(), REVERSE_ORIGIN: reverse_zone_text()}
