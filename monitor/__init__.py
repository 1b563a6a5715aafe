"""smtp-monitor: SMTP and MX monitoring with SNMP and Prometheus exporters."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smtp-monitor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
