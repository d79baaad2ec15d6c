"""A local stand-in for zenodo.org: an HTTP server on 127.0.0.1 serving files and a records API answer.

Files are served with HTTP Range support (``206 Partial Content``), and every request's path and
``Range`` header is recorded, so tests can check what a download actually asked for. A response can
be cut short (``cut_next``: the next file response stops after that many bytes and the connection
closes) and ranges can be ignored (``ignore_range``), to exercise resuming.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORD_ID = 10518968


@dataclass
class FakeZenodo:
    """The server's content and what it was asked; ``base`` is e.g. ``http://127.0.0.1:40123``."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    records: dict[int, dict] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_next: int | None = None
    ignore_range: bool = False

    @property
    def api(self) -> str:
        return f"{self.base}/api"

    def file_url(self, key: str, record_id: int = RECORD_ID) -> str:
        return f"{self.base}/api/records/{record_id}/files/{key}/content"

    def publish(
        self, key: str, data: bytes, *, record_id: int = RECORD_ID, checksum: str | None = None
    ) -> str:
        """Serve ``data`` as file ``key`` of a record listed by the records API; return its URL."""
        url = self.file_url(key, record_id)
        self.files[url.removeprefix(self.base)] = data
        entry = {
            "id": f"file-{key}",
            "key": key,
            "size": len(data),
            "checksum": checksum or f"md5:{hashlib.md5(data).hexdigest()}",
            "links": {"self": url},
        }
        record = self.records.setdefault(record_id, {"id": record_id, "doi": f"10.5281/zenodo.{record_id}"})
        record.setdefault("files", []).append(entry)
        return url

    def file_requests(self) -> list[str | None]:
        """The Range header (or None) of every request for a file, in order."""
        return [rng for path, rng in self.requests if path in self.files]


def _handler(state: FakeZenodo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path.startswith("/api/records/") and self.path.count("/") == 3:
                record = state.records.get(int(self.path.rsplit("/", 1)[1]))
                if record is None:
                    self.send_error(404)
                    return
                self._send(200, json.dumps(record).encode(), {"Content-Type": "application/json"})
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            code, start, headers = 200, 0, {}
            rng = self.headers.get("Range")
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                code, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            cut, state.cut_next = state.cut_next, None
            self._send(code, data[start:], headers, cut=cut)

        def _send(self, code: int, body: bytes, headers: dict[str, str], *, cut: int | None = None) -> None:
            """Send ``body``, its full length announced; stop after ``cut`` bytes (HTTP/1.0 then closes)."""
            self.send_response(code)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body if cut is None else body[:cut])

    return Handler


class FakeZenodoServer:
    """Context manager running :class:`FakeZenodo` in a background thread."""

    def __init__(self) -> None:
        self.state = FakeZenodo()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.state.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval: shutdown() waits up to one, and every test starts and stops a server.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeZenodo:
        self._thread.start()
        return self.state

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def sample_zip(
    sample_root: Path,
    *,
    stems: Iterable[str] = ("human_spleen_01", "human_spleen_05", "human_spleen_13"),
    wrapper: str | None = "NuInsSeg",
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """A zip of some bundled tiles in the release layout (optionally inside a ``wrapper`` folder)."""
    wanted = set(stems)
    buffer = io.BytesIO()
    prefix = f"{wrapper}/" if wrapper else ""
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(sample_root.rglob("*")):
            if path.is_file() and path.stem in wanted:
                bundle.write(path, prefix + path.relative_to(sample_root).as_posix())
        for name, data in (extra or {}).items():
            bundle.writestr(name, data)
    return buffer.getvalue()
