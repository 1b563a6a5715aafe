"""SNMP load tools: net-snmp's snmpd as the anchor, a replayed-request GET loop, timed bulk walks."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import log, on_exit, stop_process
from tests.support.ports import HOST, free_udp_port

SNMPD = "/usr/sbin/snmpd"
COMMUNITY = "public"
V3_USER = "benchuser"
V3_AUTH = ("SHA", "benchauth1")
V3_PRIV = ("AES", "benchpriv1")
SYS_DESCR = "1.3.6.1.2.1.1.1.0"


def dotted(oid: tuple[int, ...]) -> str:
    """An OID as net-snmp's tools take it on the command line: 1.3.6.1..."""
    return ".".join(map(str, oid))


def agent_snmp_config(port: int) -> dict[str, Any]:
    """The agent's `snmp:` section: v2c community and one v3 authPriv user on 127.0.0.1:port."""
    return {
        "listen": [f"udp:{HOST}:{port}"],
        "communities": [{"name": COMMUNITY}],
        "users": [
            {
                "name": V3_USER,
                "auth": {"protocol": "sha", "password": V3_AUTH[1]},
                "priv": {"protocol": "aes128", "password": V3_PRIV[1]},
            }
        ],
    }


def security_args(version: str) -> list[str]:
    """net-snmp command-line credentials for 'v2c' or 'v3' (authPriv)."""
    if version == "v2c":
        return ["-v2c", "-c", COMMUNITY]
    return [
        "-v3",
        "-l",
        "authPriv",
        "-u",
        V3_USER,
        "-a",
        V3_AUTH[0],
        "-A",
        V3_AUTH[1],
        "-x",
        V3_PRIV[0],
        "-X",
        V3_PRIV[1],
    ]


def _env() -> dict[str, str]:
    # no MIB loading: Debian ships no IETF MIB text, numeric OIDs are all we print
    return dict(os.environ, MIBS="", MIBDIRS="/nonexistent")


def snmpget(port: int, version: str, oid: str = SYS_DESCR, timeout: float = 1.0) -> str | None:
    """One GET with net-snmp's snmpget; the value line, or None if nothing answered."""
    argv = ["snmpget", *security_args(version), "-On", "-t", str(timeout), "-r", "0", f"{HOST}:{port}", oid]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, env=_env(), check=False)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def capture_request(port: int, version: str, oid: str) -> bytes:
    """The exact datagram snmpget sends for a GET of `oid` (after v3 engine discovery), from its -d dump.

    Replaying it is legal for both agents: v2c has no replay check, and SNMPv3 (RFC 3414) only
    requires the message to be inside the 150 s time window, so captures are taken just before use.
    """
    argv = ["snmpget", "-d", *security_args(version), "-On", "-t", "2", "-r", "1", f"{HOST}:{port}", oid]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"snmpget {version} {oid} on port {port} failed: {proc.stderr.strip()[-500:]}")
    blocks: list[bytes] = []
    current: bytearray | None = None
    expected = 0
    for line in (proc.stdout + proc.stderr).splitlines():
        sending = re.match(r"Sending (\d+) bytes", line)
        if sending:
            current, expected = bytearray(), int(sending.group(1))
            continue
        if current is not None and re.match(r"^\d{4}: ", line):
            current += bytes.fromhex("".join(re.findall(r"\b[0-9A-F]{2}\b", line[6:56])))
            if len(current) >= expected:
                blocks.append(bytes(current[:expected]))
                current = None
    if not blocks:
        raise RuntimeError(f"no request found in snmpget -d output:\n{proc.stdout[-1000:]}")
    return blocks[-1]


@dataclass
class GetRate:
    """A replayed-GET run: answered requests, lost ones, wall time and the client's own CPU."""

    answered: int
    lost: int
    seconds: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def client_bound(self) -> bool:
        """The client was the bottleneck (it used most of a core): the figure is a lower bound."""
        return self.seconds > 0 and self.client_cpu / self.seconds > 0.85


def get_loop(port: int, packet: bytes, seconds: float, in_flight: int = 32, max_requests: int = 2_000_000) -> GetRate:
    """Send `packet` with `in_flight` outstanding for `seconds`; count answers (any datagram back)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((HOST, port))
        sock.settimeout(0.5)
        answered = lost = sent = 0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        end = t0 + seconds
        for _ in range(in_flight):
            sock.send(packet)
            sent += 1
        outstanding = in_flight
        while time.perf_counter() < end and sent < max_requests:
            try:
                sock.recv(65535)
            except TimeoutError:
                lost += outstanding  # nothing for 0.5 s: count all as lost and start again
                for _ in range(in_flight):
                    sock.send(packet)
                sent += in_flight
                outstanding = in_flight
                continue
            answered += 1
            sock.send(packet)
            sent += 1
        elapsed = time.perf_counter() - t0
        return GetRate(answered, lost, elapsed, time.process_time() - cpu0)
    finally:
        sock.close()


@dataclass
class Walk:
    """A timed bulk walk: values received, seconds, and whether it reached the end of the subtree."""

    values: int
    seconds: float
    complete: bool
    error: str = ""
    client_cpu: float = 0.0  # snmpbulkwalk's own CPU seconds: parsing and printing every value

    @property
    def rate(self) -> float:
        return self.values / self.seconds if self.seconds else 0.0


def bulk_walk(port: int, version: str, oid: str, limit: float, repetitions: int = 50) -> Walk:
    """`snmpbulkwalk -Cr<repetitions>` of `oid`, stopped after `limit` seconds; counts value lines."""
    argv = [
        "snmpbulkwalk",
        *security_args(version),
        "-On",
        "-Oq",
        f"-Cr{repetitions}",
        "-t",
        "10",
        "-r",
        "1",
        f"{HOST}:{port}",
        oid,
    ]
    children0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    values = 0
    complete = False
    try:
        assert proc.stdout is not None
        end = t0 + limit
        os.set_blocking(proc.stdout.fileno(), False)
        pending = b""
        while True:
            chunk = None
            with contextlib.suppress(BlockingIOError):
                chunk = proc.stdout.read(1 << 16)
            if chunk:
                pending += chunk
                values += pending.count(b"\n")
                pending = pending[pending.rfind(b"\n") + 1 :]
                continue
            if chunk == b"" or proc.poll() is not None:
                rest = proc.stdout.read() or b""
                values += (pending + rest).count(b"\n")
                complete = proc.wait() == 0
                break
            if time.perf_counter() >= end:
                break
            time.sleep(0.005)
    finally:
        elapsed = time.perf_counter() - t0
        stop_process(proc, grace=2)
    error = ""
    if not complete and proc.stderr is not None:
        error = (proc.stderr.read() or b"").decode(errors="replace").strip()[-300:]
    return Walk(values, elapsed, complete, error, _children_cpu() - children0)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the walk once it ended
    return usage.ru_utime + usage.ru_stime


def poll_first_answer(port: int, started_at: float, deadline: float, stop: Callable[[], bool]) -> float | None:
    """Seconds from `started_at` (monotonic) to the first answered v2c GET of sysDescr.0 (raw UDP)."""
    request = _v2c_get_packet(SYS_DESCR)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((HOST, port))
        sock.settimeout(0.02)
        while time.monotonic() < started_at + deadline and not stop():
            with contextlib.suppress(OSError):
                sock.send(request)
            try:
                sock.recv(65535)
                return time.monotonic() - started_at
            except TimeoutError:
                continue
            except OSError:
                # Refused (nothing bound yet) comes at once: without a pause this loop spun a core
                # of the machine whose start it times, as long as the agent had not bound the port.
                time.sleep(0.02)
    return None


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(body)) + body


def _oid_body(oid: str) -> bytes:
    parts = [int(p) for p in oid.strip(".").split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _v2c_get_packet(oid: str, request_id: int = 1) -> bytes:
    """A v2c GetRequest for one OID, BER by hand (no net-snmp process needed while polling at startup)."""
    varbind = _tlv(0x30, _tlv(0x06, _oid_body(oid)) + b"\x05\x00")
    pdu = _tlv(0xA0, _tlv(0x02, request_id.to_bytes(4, "big")) + b"\x02\x01\x00\x02\x01\x00" + _tlv(0x30, varbind))
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, COMMUNITY.encode()) + pdu)


class Snmpd:
    """net-snmp's snmpd on a free loopback UDP port: v2c `public` and the same v3 authPriv user."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.config_file = self.root / "snmpd.conf"
        self.persistent_dir = self.root / "persist"
        self.log_file = self.root / "snmpd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop_now: Callable[[], None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> None:
        self.persistent_dir.mkdir(exist_ok=True)
        self.config_file.write_text(
            f"rocommunity {COMMUNITY} 127.0.0.1\n"
            f"createUser {V3_USER} {V3_AUTH[0]} {V3_AUTH[1]} {V3_PRIV[0]} {V3_PRIV[1]}\n"
            f"rouser {V3_USER} priv\n"
            "sysDescr smtp-monitor bench anchor\n"
        )
        env = dict(_env(), SNMP_PERSISTENT_DIR=str(self.persistent_dir))
        argv = [
            SNMPD,
            "-f",
            "-Lf",
            str(self.log_file),
            "-C",
            "-c",
            str(self.config_file),
            "-p",
            str(self.root / "snmpd.pid"),
            f"udp:{HOST}:{self.port}",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        proc = self.proc
        self._stop_now = on_exit(f"snmpd {proc.pid}", lambda: stop_process(proc))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"snmpd exited {proc.returncode}: {self._log()}")
            if snmpget(self.port, "v2c", timeout=0.5) is not None:
                log(f"snmpd on udp {self.port}")
                return
            time.sleep(0.1)
        raise RuntimeError(f"snmpd did not answer within {timeout:.0f} s: {self._log()}")

    def _log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._stop_now is not None:
            self._stop_now()
            self._stop_now = None
