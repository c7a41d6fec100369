"""A small stdlib client for /v1/segment (tests, the load test), loopback only unless told.

No third-party HTTP library: multipart bodies are built here and sent with http.client.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lga_export.errors import LGAError
from lga_export.serve import IMAGE_FIELD, TEXT_FIELD


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def require_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LGAError(f"{url}: give an http://HOST:PORT URL of a loopback server")
    if not is_loopback(parts.hostname):
        raise LGAError(f"{url}: {parts.hostname} is not a loopback address; the load test only targets a server "
                       f"on this machine (127.0.0.1 or ::1)")
    return parts.hostname, parts.port or 80


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = f"lga-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def mask_png(self) -> bytes:
        if self.headers.get("content-type", "").startswith("image/png"):
            return self.body
        return base64.b64decode(self.json()["mask_png"])


class Client:
    """One keep-alive connection to a server (one per thread)."""

    def __init__(self, url: str, timeout: float = 120.0, allow_remote: bool = False,
                 api_key: str | None = None) -> None:
        if allow_remote:
            parts = urlsplit(url)
            self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        else:
            self.host, self.port = require_loopback(url)
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        for attempt in range(2):  # one retry on a connection the server closed in between
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=body, headers={**self.auth, **(headers or {})})
                response = self.connection.getresponse()
                data = response.read()
                answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
                if answer.headers.get("connection", "").lower() == "close":
                    self.close()
                return answer
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def segment(self, image: bytes, filename: str, text: str | None, accept: str = "application/json",
                fields: dict[str, str] | None = None) -> Answer:
        form = {} if text is None else {TEXT_FIELD: text}
        form.update(fields or {})
        body, content_type = multipart(form, {IMAGE_FIELD: (filename, image)} if image is not None else {})
        return self.request("POST", "/v1/segment", body, {"Content-Type": content_type, "Accept": accept})

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
