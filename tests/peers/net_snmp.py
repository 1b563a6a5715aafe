"""The environment net-snmp's command-line tools run in under the tests: nothing inherited, nothing said."""

from __future__ import annotations

import os
from pathlib import Path

_INHERITED = ("MIBS", "MIBDIRS", "SMIPATH", "SNMPCONFPATH")  # MIB and config settings of the caller's shell


def tool_env(directory: Path) -> dict[str, str]:
    """os.environ without inherited MIB settings; net-snmp's persistent and config directories under `directory`.

    The persistent directory, with its cert_indexes, is made here: a tool that has to create it says
    so on stderr, which the tests read as the tools' errors."""
    persist = (directory / "net-snmp-persist").resolve()  # net-snmp wants it absolute
    (persist / "cert_indexes").mkdir(parents=True, exist_ok=True)
    conf = directory / "net-snmp-conf"
    conf.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in _INHERITED}
    env["SNMP_PERSISTENT_DIR"] = str(persist)
    env["SNMPCONFPATH"] = str(conf)  # ignore ~/.snmp and /etc/snmp
    return env
