"""The delivery probe's submission: the SMTP probe's dialogue carrying a message, and `via: mx` trying the
recipient domain's exchanges in preference order."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from typing import Any

import pytest

from monitor.config.schema import DeliveryProbeConfig, DnsConfig
from monitor.model.failures import ProbeFailure
from monitor.model.results import Reason
from monitor.probes import ProbeEnv, build_resolver
from monitor.probes.delivery import build_message, submit, wire_bytes
from tests.fakes.dns_server import ScriptedDnsServer
from tests.fakes.smtp_servers import AiosmtpdServer, RecordingHandler

TOKEN = "0123456789abcdef0123456789abcdef"


class QueueingHandler(RecordingHandler):
    """Keeps each message's bytes and answers DATA with `reply` (Postfix's wording by default)."""

    def __init__(self, reply: str = "250 2.0.0 Ok: queued as 4XyZ12AbC") -> None:
        super().__init__()
        self.reply = reply
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return self.reply


def probe(submit_section: dict[str, Any]) -> DeliveryProbeConfig:
    return DeliveryProbeConfig.model_validate(
        {
            "name": "submit-test",
            "submit": {"tls": "none", **submit_section},
            "from": "probe@src.example",
            "to": "probe@dest.example",
            "mailbox": {"host": "imap.dest.example", "username": "probe", "password": "x"},
            "timeouts": {"submit": 5},
        }
    )


def env(dns_port: int | None = None) -> ProbeEnv:
    nameservers = [f"127.0.0.1:{dns_port}"] if dns_port else []
    return ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=nameservers, timeout=2)))


def test_the_message_goes_over_mail_rcpt_data_and_the_queue_id_is_kept() -> None:
    async def scenario() -> None:
        handler = QueueingHandler()
        async with AiosmtpdServer(handler=handler) as server:
            config = probe({"host": "127.0.0.1", "port": server.port})
            message = build_message(config, TOKEN)
            message.set_content(".a line that needs stuffing\n")
            submitted = await submit(config, env(), wire_bytes(message))
        assert submitted.where == f"127.0.0.1:{server.port}"
        assert submitted.reply.code == 250
        assert handler.envelopes == [("probe@src.example", ["probe@dest.example"])]
        arrived = message_from_bytes(handler.messages[0])
        assert arrived["X-Smtp-Monitor-Token"] == TOKEN
        payload = arrived.get_payload()
        assert isinstance(payload, str)  # a single-part message
        assert payload.startswith(".a line")  # stuffed on the wire, unstuffed by the server
        assert {"submit_banner", "submit_ehlo", "submit_mail", "submit_rcpt", "submit_data"} <= submitted.timings.keys()

    asyncio.run(scenario())


def test_a_refused_message_is_a_reply_failure_with_the_reply() -> None:
    async def scenario() -> tuple[ProbeFailure, int]:
        async with AiosmtpdServer(handler=QueueingHandler("554 5.7.1 message refused as spam")) as server:
            config = probe({"host": "127.0.0.1", "port": server.port})
            with pytest.raises(ProbeFailure) as failed:
                await submit(config, env(), wire_bytes(build_message(config, TOKEN)))
        return failed.value, server.port

    failure, port = asyncio.run(scenario())
    assert failure.reason is Reason.REPLY
    assert failure.reply is not None
    assert failure.reply.code == 554
    assert f"127.0.0.1:{port} data: 554 5.7.1 message refused as spam" == failure.message


def test_via_mx_tries_the_exchanges_in_preference_order_until_one_takes_it() -> None:
    async def scenario(dns: ScriptedDnsServer) -> None:
        handler = QueueingHandler()
        async with AiosmtpdServer(handler=handler) as server:
            # 127.0.0.3 has nothing on the port: the preferred exchange refuses, the next one takes it
            dns.records("dest.example", "MX", "20 up.dest.example.", "10 down.dest.example.")
            dns.records("down.dest.example", "A", "127.0.0.3")
            dns.records("up.dest.example", "A", "127.0.0.1")
            config = probe({"via": "mx", "port": server.port})
            submitted = await submit(config, env(dns.port), wire_bytes(build_message(config, TOKEN)))
        assert submitted.where == f"up.dest.example:{server.port}"
        assert len(handler.messages) == 1

    with ScriptedDnsServer() as dns:
        asyncio.run(scenario(dns))


def test_via_mx_with_every_exchange_down_names_each() -> None:
    async def scenario(dns: ScriptedDnsServer) -> ProbeFailure:
        dns.records("dest.example", "MX", "10 a.dest.example.", "20 b.dest.example.")
        dns.records("a.dest.example", "A", "127.0.0.3")
        dns.records("b.dest.example", "A", "127.0.0.4")
        config = probe({"via": "mx", "port": 9})
        with pytest.raises(ProbeFailure) as failed:
            await submit(config, env(dns.port), wire_bytes(build_message(config, TOKEN)))
        return failed.value

    with ScriptedDnsServer() as dns:
        failure = asyncio.run(scenario(dns))
    assert failure.reason is Reason.REFUSED
    assert "a.dest.example:9 connect: connection refused; b.dest.example:9 connect" in failure.message


def test_via_mx_of_a_null_mx_domain_is_refused_at_once() -> None:
    async def scenario(dns: ScriptedDnsServer) -> ProbeFailure:
        dns.records("dest.example", "MX", "0 .")
        config = probe({"via": "mx"})
        with pytest.raises(ProbeFailure) as failed:
            await submit(config, env(dns.port), wire_bytes(build_message(config, TOKEN)))
        return failed.value

    with ScriptedDnsServer() as dns:
        failure = asyncio.run(scenario(dns))
    assert failure.reason is Reason.NULL_MX
