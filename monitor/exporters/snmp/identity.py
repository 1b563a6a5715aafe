"""The SNMP engine's identity, one for the agent and the notifier: engine ID, boots and the USM protocols."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pysnmp.entity import config as pysnmp_config

from monitor.exporters.snmp import mib_oids
from monitor.state.persistence import write_private

log = logging.getLogger("smtp_monitor.snmp")

ENGINE_STATE_FILE = "snmp-engine.json"
BOOTS_MAX = 2**31 - 1  # RFC 3414 2.2.2: snmpEngineBoots latches at its maximum
BOOTS_CLOCK_EPOCH = 1_704_067_200  # 2024-01-01 UTC: boots derived from the clock reach BOOTS_MAX in 2092
ENGINE_ID_OCTETS = (5, 32)  # RFC 3411 SnmpEngineID: SIZE(5..32)

# pysnmp's protocol of each configured name (monitor.config.schema.AuthProtocol, PrivProtocol).
AUTH_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "md5": pysnmp_config.USM_AUTH_HMAC96_MD5,
    "sha": pysnmp_config.USM_AUTH_HMAC96_SHA,
    "sha224": pysnmp_config.USM_AUTH_HMAC128_SHA224,
    "sha256": pysnmp_config.USM_AUTH_HMAC192_SHA256,
    "sha384": pysnmp_config.USM_AUTH_HMAC256_SHA384,
    "sha512": pysnmp_config.USM_AUTH_HMAC384_SHA512,
}
# AES-192/256 with Blumenthal key extension (draft-blumenthal-aes-usm-04), as net-snmp's AES192/AES256
# (not Cisco's "-C" variant).
PRIV_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "des": pysnmp_config.USM_PRIV_CBC56_DES,
    "aes128": pysnmp_config.USM_PRIV_CFB128_AES,
    "aes192": pysnmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "aes256": pysnmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
}


class SnmpStateError(Exception):
    """The engine state file cannot be written (snmpEngineBoots must persist, RFC 3414)."""


@dataclass(frozen=True, slots=True)
class EngineState:
    engine_id: bytes
    boots: int


def generate_engine_id() -> bytes:
    """RFC 3411 snmpEngineID: enterprise number with the high bit, format 5 (octets), 8 random octets."""
    enterprise = mib_oids.ENTERPRISE_OID[-1]
    return (0x80000000 | enterprise).to_bytes(4, "big") + b"\x05" + secrets.token_bytes(8)


def parse_engine_id(value: bytes | str) -> bytes:
    """An engine ID given as octets or as hex text (with or without 0x); ValueError unless 5 to 32 octets."""
    raw = value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x").removeprefix("0X"))
    low, high = ENGINE_ID_OCTETS
    if not low <= len(raw) <= high:
        raise ValueError("an SNMP engine ID is 5 to 32 octets")
    return raw


def clock_boots(now: float | None = None) -> int:
    """snmpEngineBoots for an engine ID whose count was lost: seconds since BOOTS_CLOCK_EPOCH, at least 1.

    Boots counted on from an earlier start (one a restart) stay below it unless the agent restarted more
    than once a second on average since then, so no boots value a captured message carries comes back."""
    seconds = int((time.time() if now is None else now) - BOOTS_CLOCK_EPOCH)
    return min(max(seconds, 1), BOOTS_MAX)


def _read_engine_state(path: Path) -> tuple[bytes | None, int | None]:
    """(engine ID, boots) saved in `path`, each None if missing or not valid (boots: 0 to BOOTS_MAX)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable SNMP engine state %s: %s", path, exc)
        return None, None
    engine_id: bytes | None = None
    boots: int | None = None
    if isinstance(data, dict):
        try:
            engine_id = bytes.fromhex(data.get("engine_id", ""))
        except (TypeError, ValueError):
            engine_id = None
        value = data.get("boots")
        boots = value if type(value) is int and 0 <= value <= BOOTS_MAX else None
    if not engine_id or not ENGINE_ID_OCTETS[0] <= len(engine_id) <= ENGINE_ID_OCTETS[1]:
        engine_id = None
    if engine_id is None or boots is None:
        log.warning("ignoring %s in SNMP engine state %s", "engine_id" if engine_id is None else "boots", path)
    return engine_id, boots


def next_engine_state(path: Path, configured: bytes | None) -> EngineState:
    """Read the saved engine state, count this start as one more boot and save it atomically.

    A configured engine ID wins. A generated one starts boots at 1 (no message ever carried it); an
    engine ID that may have been in use before, with its count missing or unreadable (a configured
    one, or the saved one with a bad boots value), takes its boots from the clock (clock_boots), so
    that boots never go back to a value replayed captures carry (RFC 3414 2.2.2)."""
    saved_id, saved_boots = _read_engine_state(path)
    engine_id = configured or saved_id or generate_engine_id()
    if saved_id == engine_id and saved_boots is not None:
        boots = min(saved_boots + 1, BOOTS_MAX)
    elif configured is not None or saved_id == engine_id:
        boots = clock_boots()
        log.warning(
            "SNMP engine state %s has no boots count for engine ID %s: snmpEngineBoots set from the clock to %d "
            "(seconds since 2024-01-01), above any count it can have had, so old messages cannot be replayed",
            path, engine_id.hex(), boots,
        )  # fmt: skip
    else:
        boots = 1
    state = EngineState(engine_id, boots)
    try:
        write_private(path, json.dumps({"engine_id": engine_id.hex(), "boots": boots}) + "\n")
    except OSError as exc:
        raise SnmpStateError(f"cannot write SNMP engine state {path}: {exc.strerror or exc}") from None
    return state
