"""A local HTTP server for the URL tests: a good photo, a 404, a page, a too-large body, a slow answer, a redirect loop."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import EXAMPLES

PHOTO = (EXAMPLES / "chelsea.jpg").read_bytes()
LARGE = 64 * 1024  # bytes of the too-large answers (the tests pass a smaller limit)


class PhotoServer:
    """`with PhotoServer() as server: server.url("/photo.jpg")`; `requests` lists the paths asked for."""

    def __init__(self):
        self.requests: list[str] = []
        self.release = threading.Event()  # the slow answer waits for it: no sleeps, no race with the client's timeout
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                owner.requests.append(self.path)
                if self.path == "/photo.jpg":
                    self._answer(200, PHOTO, "image/jpeg")
                elif self.path == "/page.html":
                    self._answer(200, b"<html>not a photo</html>", "text/html")
                elif self.path == "/text.jpg":
                    self._answer(200, b"plain bytes, not an image", "application/octet-stream")
                elif self.path == "/large-declared.jpg":
                    self._answer(200, b"\xff" * LARGE, "image/jpeg")
                elif self.path == "/large-streamed.jpg":  # no Content-Length: the size shows only while reading
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"\xff" * LARGE)
                elif self.path == "/slow.jpg":
                    owner.release.wait(10)
                    self._answer(200, PHOTO, "image/jpeg")
                elif self.path.startswith("/loop"):
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/redirect.jpg":
                    self.send_response(301)
                    self.send_header("Location", "/photo.jpg")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._answer(404, b"not found", "text/plain")

            def _answer(self, status: int, body: bytes, kind: str):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> "PhotoServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
