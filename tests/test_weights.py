"""The weights manager against a real HTTP server on 127.0.0.1: downloads, hashes, resume, imports."""
from __future__ import annotations

import hashlib
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from safetensors.torch import save_file

from artchain.core.errors import WeightsError
from artchain.core.weights import WeightStore, load_safely, parse_manifest

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, so a cut transfer leaves a real partial file


class WeightServer(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /good; /cut drops the connection halfway the first time; honours Range."""

    cuts_left = 1
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        WeightServer.requests.append((self.path, self.headers.get("Range")))
        if self.path not in {"/good", "/cut"}:
            self.send_error(404, "Not Found")
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/cut" and WeightServer.cuts_left:
            WeightServer.cuts_left -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the peer sees a short body: a cut transfer
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    WeightServer.cuts_left = 1
    WeightServer.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), WeightServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def manifest(url: str, sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> str:
    return yaml.safe_dump({"weights": [{
        "id": "demo", "plugin": "demo", "file": "demo.bin", "sha256": sha256, "size": len(PAYLOAD),
        "urls": [url], "licence": "MIT", "provenance": "test payload"}]})


def test_pull_downloads_checks_and_renames(server, tmp_path):
    store = WeightStore(tmp_path, manifest(f"{server}/good"))
    seen = []
    path = store.pull("demo", progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list(tmp_path.glob("*.part"))
    assert store.status("demo").state == "present"


def test_pull_rejects_wrong_hash_and_keeps_nothing(server, tmp_path):
    store = WeightStore(tmp_path, manifest(f"{server}/good", sha256="0" * 64))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        store.pull("demo")
    assert list(tmp_path.iterdir()) == []


def test_pull_resumes_a_cut_transfer(server, tmp_path):
    store = WeightStore(tmp_path, manifest(f"{server}/cut"))
    path = store.pull("demo")
    assert path.read_bytes() == PAYLOAD
    ranges = [rng for p, rng in WeightServer.requests if p == "/cut"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_pull_reports_404(server, tmp_path):
    store = WeightStore(tmp_path, manifest(f"{server}/missing"))
    with pytest.raises(WeightsError, match="HTTP 404"):
        store.pull("demo")
    assert not (tmp_path / "demo.bin").exists()


def test_missing_weight_names_the_command(tmp_path):
    store = WeightStore(tmp_path, manifest("http://127.0.0.1:9/none"))
    with pytest.raises(WeightsError, match="artchain weights pull demo"):
        store.path("demo")


def test_corrupted_file_is_a_mismatch(tmp_path):
    store = WeightStore(tmp_path, manifest("http://127.0.0.1:9/none"))
    (tmp_path / "demo.bin").write_bytes(b"not the payload")
    assert store.status("demo").state == "mismatch"
    with pytest.raises(WeightsError, match="sha256 differs"):
        store.path("demo")


class Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_carrying_code_is_refused(tmp_path, writer, capsys):
    evil = tmp_path / "evil.pth"
    if writer == "pickle":
        evil.write_bytes(pickle.dumps({"weight": Exploit()}))
    else:
        torch.save({"weight": Exploit()}, evil)
    with pytest.raises(WeightsError, match="refused"):
        load_safely(evil)
    store = WeightStore(tmp_path / "store", manifest("http://127.0.0.1:9/none"))
    with pytest.raises(WeightsError, match="refused"):
        store.import_file(evil, "demo")
    assert store.imported() == {}
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"hello", bytes(range(256)) * 8, b"\x80\x02}q\x00h\x65.",
                                     pickle.dumps([1, 2, 3], protocol=2)])
def test_any_other_file_is_a_clear_error(tmp_path, content):
    other = tmp_path / "other.pth"
    other.write_bytes(content)
    with pytest.raises(WeightsError, match="other.pth: (not a readable checkpoint|refused: not just tensors|holds a list)"):
        load_safely(other)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsError, match="cut.pth: not a readable checkpoint"):
        load_safely(cut)


def test_import_records_hash_and_overrides_manifest(tmp_path):
    own = tmp_path / "mine.safetensors"
    save_file({"w": torch.arange(6.0)}, str(own))
    store = WeightStore(tmp_path / "store", manifest("http://127.0.0.1:9/none"))
    record = store.import_file(own, "demo")
    assert record.sha256 == hashlib.sha256(own.read_bytes()).hexdigest()
    assert torch.equal(store.load("demo")["w"], torch.arange(6.0))
    assert store.status("demo").state == "imported"
    (store.directory / record.file).write_bytes(b"tampered")
    assert store.status("demo").state == "mismatch"


def test_manifest_is_validated():
    with pytest.raises(WeightsError, match="sha256 must be 64"):
        parse_manifest(yaml.safe_dump({"weights": [{"id": "x", "plugin": "p", "file": "f", "sha256": "ab",
                                                     "licence": "l", "provenance": "p"}]}))
    with pytest.raises(WeightsError, match="unexpected keyword"):
        parse_manifest(yaml.safe_dump({"weights": [{"id": "x", "colour": "red"}]}))


def test_bundled_manifest_parses():
    WeightStore(directory=None)


def test_an_import_the_plugin_refuses_is_not_recorded_and_an_import_can_be_undone(tmp_path):
    own = tmp_path / "mine.safetensors"
    save_file({"w": torch.arange(6.0)}, str(own))
    store = WeightStore(tmp_path / "store", manifest("http://127.0.0.1:9/none"))

    def wants_a_bias(state):
        if "bias" not in state:
            raise WeightsError(f"not this network's weights (found {sorted(state)})")

    with pytest.raises(WeightsError, match=r"found \['w'\]"):
        store.import_file(own, "demo", check=wants_a_bias)
    assert store.imported() == {} and not (store.directory / "imported").exists()
    record = store.import_file(own, "demo")
    assert store.status("demo").state == "imported"
    assert store.remove_import("demo") == record
    assert store.status("demo").state == "missing" and not (store.directory / record.file).exists()
    with pytest.raises(WeightsError, match="no imported file for 'demo'"):
        store.remove_import("demo")
