"""An HTTPS server on a free loopback port with a trustme certificate, serving canned responses (MTA-STS policies)."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from tests.peers.lifecycle import Peer
from tests.support.ports import HOST

POLICY_PATH = "/.well-known/mta-sts.txt"
HANDSHAKE_TIMEOUT = 5.0  # a client that connects and says nothing must not hold a thread for long
STOP_DEADLINE = 5.0


@dataclass(frozen=True, slots=True)
class CannedResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class _Handler(BaseHTTPRequestHandler):
    server: _TlsServer
    timeout = HANDSHAKE_TIMEOUT  # bounds every read of the request

    def do_GET(self) -> None:
        self.server.owner.requests.append(self.path)
        canned = self.server.owner.responses.get(self.path)
        if canned is None:
            canned = CannedResponse(404, b"not found\n", (("Content-Type", "text/plain"),))
        self.send_response(canned.status)
        for name, value in canned.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(canned.body)))
        self.end_headers()
        self.wfile.write(canned.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded in HttpsServer.requests


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: HttpsServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.context = context
        super().__init__((HOST, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the request's thread, not in accept(): a stalled or
        # failing client (wrong CA, no TLS) then never blocks the server.
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.owner.handshake_errors.append(repr(exc))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.handshake_errors.append(f"error serving {client_address}")


class HttpsServer(Peer):
    """HTTPS on 127.0.0.1:`port` presenting a trustme certificate for `hostnames`; `ca_file` verifies it.

    `serve(path, body, ...)` sets what a path answers (404 otherwise); `requests` lists the
    paths asked for, in order. Runs `http.server` in a background thread.
    """

    host = HOST

    def __init__(self, tmpdir: Path | str, hostnames: tuple[str, ...] = ("mta-sts.good.test",)) -> None:
        self.root = Path(tmpdir).resolve()
        self.hostnames = hostnames
        self.ca_file = self.root / "https-ca.pem"
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert(*hostnames)
        self.port = 0  # known once started
        self.responses: dict[str, CannedResponse] = {}
        self.requests: list[str] = []
        self.handshake_errors: list[str] = []
        self._server: _TlsServer | None = None
        self._thread: threading.Thread | None = None

    def serve(
        self,
        path: str,
        body: bytes | str,
        *,
        status: int = 200,
        content_type: str = "text/plain",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.responses[path] = CannedResponse(status, data, (("Content-Type", content_type), *headers))

    def serve_policy(self, text: str, **kwargs: Any) -> None:
        """Answer the MTA-STS well-known path with `text` (status/content_type/headers as in serve())."""
        self.serve(POLICY_PATH, text, **kwargs)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.leaf.configure_cert(context)
        self._server = _TlsServer(self, context)  # binds port 0: the kernel picks a free port
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"https:{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(STOP_DEADLINE)
            self._thread = None


def silent_listener() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 that never accepts: connections open, TLS never starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(8)
    return sock
