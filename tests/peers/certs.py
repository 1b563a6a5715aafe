"""Re-exported from tests.support.certs for the peers that still import `.certs`; new code imports tests.support."""

from tests.support.certs import SERVER_IP, SERVER_NAME, make_self_signed_cert

__all__ = ["SERVER_IP", "SERVER_NAME", "make_self_signed_cert"]
