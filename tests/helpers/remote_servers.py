"""Servers a test starts on 127.0.0.1: a static file server, moto's S3 server, and a proxy that drops connections.

The :class:`FlakyProxy` forwards each HTTP request to a backend and, on every ``drop_every``-th
GET whose answer has a body, sends the headers and half the body and then closes the connection
(a server or load balancer going away mid-transfer). It counts what it dropped.
"""
from __future__ import annotations

import functools
import http.client
import http.server
import itertools
import threading
from pathlib import Path
from typing import Optional


class _Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


def _serve(server: http.server.HTTPServer) -> http.server.HTTPServer:
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def file_server(folder: Path) -> http.server.HTTPServer:
    """Serves ``folder`` at ``http://127.0.0.1:<port>/``; call ``shutdown()`` when done."""
    return _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))))


class FlakyProxy:
    """HTTP proxy to ``backend`` (``host:port``) cutting every ``drop_every``-th body-carrying GET midway."""

    def __init__(self, backend: str, drop_every: Optional[int]) -> None:
        self.backend, self.drop_every = backend, drop_every
        self.requests, self.dropped = itertools.count(1), 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(proxy.backend, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                # HEAD: the backend's length of the body it would send
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                cut = (self.command == "GET" and len(data) > 64 and proxy.drop_every
                       and next(proxy.requests) % proxy.drop_every == 0)
                self.end_headers()
                if cut:
                    proxy.dropped += 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class S3Server:
    """moto's standalone S3 server on 127.0.0.1 with a bucket; ``env`` points boto/s3fs at it."""

    def __init__(self, bucket: str = "shards") -> None:
        from moto.server import ThreadedMotoServer

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.endpoint = f"http://127.0.0.1:{self.moto._server.server_port}"
        self.bucket = bucket
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}
        self.client().create_bucket(Bucket=bucket)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def upload(self, folder: Path, prefix: str = "") -> None:
        client = self.client()
        for path in sorted(folder.iterdir()):
            client.upload_file(str(path), self.bucket, f"{prefix}{path.name}")

    def shutdown(self) -> None:
        self.moto.stop()
