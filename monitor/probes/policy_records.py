"""SPF (RFC 7208) and DMARC (RFC 7489) record presence and syntax checks."""

from __future__ import annotations

import ipaddress
import re

from monitor.model.facts import PolicyRecord

_SPF_MECHANISM = re.compile(
    r"^[+\-~?]?(all|include:\S+|exists:\S+|ptr(:\S+)?|a(:[^/\s]+)?(/\d{1,2})?(//\d{1,3})?"
    r"|mx(:[^/\s]+)?(/\d{1,2})?(//\d{1,3})?|ip4:\S+|ip6:\S+)$",
    re.IGNORECASE,
)
_SPF_MODIFIER = re.compile(r"^[a-z][a-z0-9_.-]*=\S*$", re.IGNORECASE)
_DMARC_POLICIES = {"none", "quarantine", "reject"}
_DMARC_START = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)

__all__ = ["PolicyRecord", "check_dmarc", "check_spf"]


def _strings(txt_records: list[str], prefix: str) -> list[str]:
    return [t for t in txt_records if t.lower().startswith(prefix) and t[len(prefix) : len(prefix) + 1] in ("", " ")]


def check_spf(txt_records: list[str]) -> PolicyRecord:
    """The domain's TXT strings (each record's strings joined) to a verdict on its SPF record."""
    found = _strings(txt_records, "v=spf1")
    if not found:
        return PolicyRecord("spf", "", "no SPF record (v=spf1)")
    if len(found) > 1:
        return PolicyRecord("spf", found[0], f"{len(found)} SPF records: RFC 7208 makes that a permerror")
    record = found[0]
    if not record.isascii():
        return PolicyRecord("spf", record, "non-ASCII characters: RFC 7208 records are US-ASCII only")
    for term in record.split()[1:]:
        if _SPF_MECHANISM.match(term):
            kind, _, value = term.lstrip("+-~?").partition(":")
            if kind.lower() in ("ip4", "ip6"):
                try:
                    network = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    return PolicyRecord("spf", record, f"bad network in {term!r}")
                if (kind.lower() == "ip4") != (network.version == 4):
                    return PolicyRecord("spf", record, f"wrong address family in {term!r}")
            continue
        if not _SPF_MODIFIER.match(term):
            return PolicyRecord("spf", record, f"unknown term {term!r}")
    return PolicyRecord("spf", record, "")


def check_dmarc(txt_records: list[str]) -> PolicyRecord:
    """The `_dmarc.<domain>` TXT strings to a verdict on the DMARC record."""
    found = [t for t in txt_records if _DMARC_START.match(t)]
    if not found:
        return PolicyRecord("dmarc", "", "no DMARC record (v=DMARC1)")
    if len(found) > 1:
        return PolicyRecord("dmarc", found[0], f"{len(found)} DMARC records: receivers ignore them all")
    record = found[0]
    if not record.isascii():
        return PolicyRecord("dmarc", record, "non-ASCII characters: RFC 7489 records are US-ASCII only")
    tags: dict[str, str] = {}
    for part in record.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return PolicyRecord("dmarc", record, f"malformed tag {part!r}")
        tags[key.strip().lower()] = value.strip()
    if tags.get("p", "").lower() not in _DMARC_POLICIES:
        return PolicyRecord("dmarc", record, "p= must be none, quarantine or reject")
    if "sp" in tags and tags["sp"].lower() not in _DMARC_POLICIES:
        return PolicyRecord("dmarc", record, "sp= must be none, quarantine or reject")
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        return PolicyRecord("dmarc", record, "pct= must be 0 to 100")
    for key in ("rua", "ruf"):
        for uri in filter(None, (u.strip() for u in tags.get(key, "").split(","))):
            if not uri.lower().startswith("mailto:"):
                return PolicyRecord("dmarc", record, f"{key}= URI {uri!r} is not mailto:")
    return PolicyRecord("dmarc", record, "")
