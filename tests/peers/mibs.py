"""Where the IETF base MIB texts are: Debian ships them only inside erlang-snmp."""

from __future__ import annotations

import glob
import re
from pathlib import Path

_PATTERN = "/usr/lib/erlang/lib/snmp-*/mibs"


def _version_key(path: Path) -> tuple[int, ...]:
    # .../snmp-5.13.3/mibs -> (5, 13, 3): numeric, so 5.13 sorts after 5.9
    version = path.parent.name.partition("-")[2]
    return tuple(int(part) for part in re.findall(r"\d+", version))


def base_mib_dir() -> Path:
    """The erlang-snmp mibs directory (SNMPv2-SMI, SNMPv2-TC, SNMP-FRAMEWORK-MIB, ... as *.mib).

    Put it on SMIPATH for smilint or on net-snmp's -M for snmpwalk/snmptable.
    """
    candidates = sorted(
        (Path(p) for p in glob.glob(_PATTERN) if (Path(p) / "SNMPv2-SMI.mib").is_file()),
        key=_version_key,
    )
    if not candidates:
        raise FileNotFoundError(
            f"no base MIB directory matching {_PATTERN} with SNMPv2-SMI.mib: "
            "install Debian's erlang-snmp (scripts/test-deps.sh does)"
        )
    return candidates[-1]  # newest version if several are installed
