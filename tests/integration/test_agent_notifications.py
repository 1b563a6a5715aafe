"""The agent's notifications at a real snmptrapd: failure and recovery of a real Postfix, across kill -9."""

from __future__ import annotations

import time
from collections.abc import Callable

from monitor.exporters.snmp import mib_oids as mib
from tests.peers.agent import AgentProcess
from tests.peers.postfix import PostfixServer
from tests.peers.snmptrapd import TrapReceiver

FAILED_OID = ".".join(map(str, mib.notification_oid(mib.Notification.SMTP_PROBE_FAILED)))
RECOVERED_OID = ".".join(map(str, mib.notification_oid(mib.Notification.SMTP_PROBE_RECOVERED)))
COLD_START_OID = "1.3.6.1.6.3.1.1.5.1"


def count(receiver: TrapReceiver, oid: str) -> int:
    # snmptrapd -On logs snmpTrapOID.0 = OID: .1.3.6...; match the value exactly
    return sum(1 for line in receiver.notifications() if f"OID: .{oid}\t" in line + "\t")


def agent_config(postfix: PostfixServer, receiver: TrapReceiver, kind: str) -> dict[str, object]:
    return {
        "defaults": {"interval": "0.3s", "timeout": "2s", "alert_after": 2},
        "snmp": {
            "enabled": True,
            "listen": [],
            "notify": [
                {
                    "host": "127.0.0.1",
                    "port": receiver.port,
                    "version": "2c",
                    "community": "public",
                    "type": kind,
                    "timeout": "1s",
                }
            ],
        },
        "smtp": [{"name": "relay", "host": "127.0.0.1", "port": postfix.plain_port, "tls": "none"}],
    }


def wait_count(receiver: TrapReceiver, oid: str, expected: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while count(receiver, oid) < expected and time.monotonic() < end:
        time.sleep(0.1)
    assert count(receiver, oid) == expected, "\n".join(receiver.notifications())


class TestNotificationsAcrossRestarts:
    def test_failure_and_recovery_each_notified_once_across_kill_9(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        trap_receiver: TrapReceiver,
    ) -> None:
        agent = agent_factory(agent_config(postfix, trap_receiver, "inform"))
        wait_count(trap_receiver, COLD_START_OID, 1)
        agent.wait_until(lambda: agent.value("smtp_probe_status", probe="relay", status="ok") == 1.0, 10, "not ok")
        postfix.pause()
        wait_count(trap_receiver, FAILED_OID, 1)
        assert "relay" in trap_receiver.wait_for(FAILED_OID)
        # coldStart and the failure acknowledged: a kill before the ack would rightly resend
        receiver = f"127.0.0.1:{trap_receiver.port}"
        agent.wait_until(
            lambda: agent.value("smtp_monitor_notifications_total", receiver=receiver, outcome="acknowledged") == 2.0,
            5,
            "failure inform not counted as acknowledged",
        )

        assert agent.proc is not None
        agent.proc.kill()  # SIGKILL while the probe is failed
        agent.proc.wait(10)
        agent.log.close()
        agent.start()
        wait_count(trap_receiver, COLD_START_OID, 2)
        time.sleep(2.0)  # several failing runs after the restart
        assert count(trap_receiver, FAILED_OID) == 1  # no duplicate failure notification

        postfix.resume()
        wait_count(trap_receiver, RECOVERED_OID, 1)
        time.sleep(1.0)
        assert count(trap_receiver, RECOVERED_OID) == 1
        # coldStart and the recovery since the restart; the ack is counted just after snmptrapd logs
        agent.wait_until(
            lambda: agent.value("smtp_monitor_notifications_total", receiver=receiver, outcome="acknowledged") == 2.0,
            5,
            "informs not counted as acknowledged",
        )

    def test_notification_undelivered_at_a_crash_is_sent_after_the_restart(
        self,
        agent_factory: Callable[[dict[str, object]], AgentProcess],
        postfix: PostfixServer,
        trap_receiver: TrapReceiver,
    ) -> None:
        agent = agent_factory(agent_config(postfix, trap_receiver, "inform"))
        wait_count(trap_receiver, COLD_START_OID, 1)
        agent.wait_until(lambda: agent.value("smtp_probe_status", probe="relay", status="ok") == 1.0, 10, "not ok")
        trap_receiver.stop()  # the receiver is down when the failure happens
        postfix.pause()
        agent.wait_until(
            lambda: agent.value("smtp_probe_status", probe="relay", status="failed") == 1.0, 10, "never failed"
        )
        assert agent.proc is not None
        agent.proc.kill()  # the inform is still being retried: it exists only in the outbox
        agent.proc.wait(10)
        agent.log.close()
        trap_receiver.start()
        agent.start()
        wait_count(trap_receiver, FAILED_OID, 1)
        assert "resending 1 notifications" in agent.logs()
        postfix.resume()
