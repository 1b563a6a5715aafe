"""Probes: one module per kind, each `async def run(config, env) -> result`, touching nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.asyncresolver
import dns.flags
import dns.nameserver
import dns.resolver

from monitor.config.schema import Config, Defaults, DnsConfig
from monitor.probes.tls import TlsContexts


def build_resolver(dns_config: DnsConfig) -> dns.asyncresolver.Resolver:
    """dnspython's async resolver: the system's unless nameservers are configured."""
    if dns_config.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in dns_config.nameserver_addresses()
        ]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf (containers): IP targets still work, names fail as DNS errors.
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    resolver.lifetime = dns_config.timeout
    resolver.timeout = dns_config.timeout
    # Probes must see the DNS as it is now, not as a cache remembers it.
    resolver.cache = None
    return resolver


def dnssec_variant(resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
    """The same servers, asking for DNSSEC records (DO) and for the AD bit of a validating resolver."""
    variant = dns.asyncresolver.Resolver(configure=False)
    variant.nameservers = resolver.nameservers
    variant.lifetime, variant.timeout, variant.cache = resolver.lifetime, resolver.timeout, None
    variant.use_edns(0, dns.flags.DO, 1232)
    variant.flags = dns.flags.RD | dns.flags.AD
    return variant


@dataclass
class ProbeEnv:
    """What probes share: the resolver, cached TLS contexts and the defaults."""

    resolver: dns.asyncresolver.Resolver
    defaults: Defaults = field(default_factory=Defaults)
    tls: TlsContexts = field(default_factory=TlsContexts)
    _dnssec_resolver: dns.asyncresolver.Resolver | None = None

    @property
    def dnssec_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dnssec_resolver is None:
            self._dnssec_resolver = dnssec_variant(self.resolver)
        return self._dnssec_resolver

    @classmethod
    def from_config(cls, config: Config) -> ProbeEnv:
        return cls(resolver=build_resolver(config.dns), defaults=config.defaults)
