"""Fixtures shared by test modules: a local HTTP file server (downloads are tested on 127.0.0.1 only) and a
ResNet-18 weights file."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch
import torchvision


@pytest.fixture
def server():
    """A Range-aware file server. Set ``files[path] = bytes``; ``cut_after`` (one-shot), ``corrupt`` and
    ``ignore_range`` misbehave on purpose; ``requests`` records ``(path, Range header)``."""
    state = SimpleNamespace(files={}, requests=[], cut_after=None, corrupt=False, ignore_range=False)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append((self.path, self.headers.get("Range")))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if state.corrupt:  # flip one byte in the middle: same size, wrong content
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
            start, ranged = 0, self.headers.get("Range")
            if ranged and not state.ignore_range:
                start = int(ranged.removeprefix("bytes=").rstrip("-"))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            chunk = body[start:]
            if state.cut_after is not None:  # promise the whole length, send less, hang up
                chunk, state.cut_after = chunk[: state.cut_after], None
            self.wfile.write(chunk)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory):
    """A ResNet-18 state dict standing in for the Shapes-pretrained backbone (random, seeded)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path
