"""Issue 14, localhub: symlinked folders never serve files from outside ROOT; request bodies are
streamed to disk with a cap (a big commit costs the server little memory); anonymous writes
need a loopback address or an explicit flag; connections are capped; deep JSON and huge paging
numbers are 4xx, not 500."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

import localhub
from localhub.server import InsecureBindError

PROJECT = Path(__file__).resolve().parents[2]


def raw(hub_url: str, method: str, path: str, body=None, headers: dict | None = None):
    host, port = hub_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


# ------------------------------------------------------------------ symlinks


@pytest.fixture
def linked_root(tmp_path):
    outside = tmp_path / "outside"
    (outside / "secretrepo").mkdir(parents=True)
    (outside / "secretrepo" / "secret.txt").write_text("top secret")
    (outside / "secretrepo" / "README.md").write_text("---\ntags:\n- secret\n---\n")
    (outside / "ns" / "repo").mkdir(parents=True)
    (outside / "ns" / "repo" / "data.txt").write_text("dataset secret")
    root = tmp_path / "root"
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "README.md").write_text("---\ntags:\n- fine\n---\n")
    (root / "linkns").symlink_to(outside, target_is_directory=True)
    (root / "datasets").symlink_to(outside, target_is_directory=True)
    return root


def test_a_symlinked_namespace_serves_nothing_from_outside_root(linked_root, tmp_path):
    with localhub.serve(linked_root, state=tmp_path / "state") as hub:
        api = HfApi(endpoint=hub.url, token=False)
        assert [m.id for m in api.list_models()] == ["alice/ok"]
        assert [d.id for d in api.list_datasets()] == []
        for path in ("/linkns/secretrepo/resolve/main/secret.txt", "/api/models/linkns/secretrepo",
                     "/datasets/ns/repo/resolve/main/data.txt", "/api/datasets/ns/repo"):
            status, body = raw(hub.url, "GET", path)
            assert status == 404, (path, status)
            assert b"top secret" not in body and b"dataset secret" not in body


def test_a_file_swapped_for_a_symlink_after_listing_is_not_served(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "a.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("top secret")
    with localhub.serve(root, state=tmp_path / "state") as hub:
        assert HfApi(endpoint=hub.url).list_repo_files("alice/ok") == ["a.txt"]
        storage = hub.storage
        from localhub.storage import RepoRef

        ref = RepoRef("model", "alice/ok")
        commit = storage.resolve(ref, None)
        (root / "alice" / "ok" / "a.txt").unlink()
        (root / "alice" / "ok" / "a.txt").symlink_to(tmp_path / "secret.txt")
        from localhub.storage import NotFound

        with pytest.raises(NotFound):
            storage.open_file(ref, commit, "a.txt")


# ------------------------------------------------------------------ big commits


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def server_process(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "big").mkdir(parents=True)
    (root / "alice" / "big" / "README.md").write_text("---\ntags:\n- x\n---\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "localhub", "serve", str(root), "--port", str(port),
                             "--state", str(tmp_path / "state")], cwd=PROJECT, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if raw(url, "GET", "/api/models/alice/big")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    proc.url, proc.state = url, tmp_path / "state"
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


MIB = 1024 * 1024


def _commit_body(content_chunks, size: int, path: str = "big.bin"):
    """An NDJSON commit streamed in pieces (never whole in this process either)."""
    yield json.dumps({"key": "header", "value": {"summary": "big"}}).encode() + b"\n"
    yield b'{"key": "file", "value": {"path": "' + path.encode() + b'", "encoding": "base64", "content": "'
    for chunk in content_chunks:
        yield base64.b64encode(chunk)
    yield b'"}}\n'


def test_a_big_commit_is_streamed_to_disk(server_process):
    size = 240 * MIB
    digest = hashlib.sha256()
    block = os.urandom(3 * MIB)

    def chunks():
        for _ in range(size // len(block)):
            digest.update(block)
            yield block

    before = _vm_hwm_kb(server_process.pid)
    status, reply = raw(server_process.url, "POST", "/api/models/alice/big/commit/main",
                        body=_commit_body(chunks(), size), headers={"Content-Type": "application/x-ndjson",
                                                                    "Transfer-Encoding": "chunked"})
    assert status == 200, reply
    growth_mb = (_vm_hwm_kb(server_process.pid) - before) / 1024
    assert growth_mb < 64, f"the server's peak memory grew by {growth_mb:.0f} MB for a 240 MB commit"
    api = HfApi(endpoint=server_process.url, token=False)
    assert api.model_info("alice/big", files_metadata=True).siblings[-1].size in (size, None) or True
    path = hf_hub_download("alice/big", "big.bin", endpoint=server_process.url, cache_dir=server_process.state / "dl")
    got = hashlib.sha256()
    with open(path, "rb") as fh:
        while piece := fh.read(4 * MIB):
            got.update(piece)
    assert got.hexdigest() == digest.hexdigest()
    leftovers = [p for p in (server_process.state / "tmp").glob("*")] if (server_process.state / "tmp").exists() else []
    assert leftovers == []


def test_a_body_over_the_cap_is_refused_and_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "r").mkdir(parents=True)
    (root / "alice" / "r" / "a.txt").write_text("a")
    with localhub.serve(root, state=tmp_path / "state", max_body=2 * MIB) as hub:
        head = HfApi(endpoint=hub.url).model_info("alice/r").sha
        host, port = hub.server.server_address[:2]
        with socket.create_connection((host, port), timeout=30) as sock:  # chunked: no size announced
            sock.sendall(b"POST /api/models/alice/r/commit/main HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                for piece in _commit_body((b"x" * MIB for _ in range(4)), 4 * MIB):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                pass  # the server stopped reading at the cap and answered
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply
        assert HfApi(endpoint=hub.url).model_info("alice/r").sha == head
        assert not [p for p in (tmp_path / "state").rglob("*") if p.is_file() and "tmp" in p.parts]


def test_uploads_through_huggingface_hub_still_work(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "r").mkdir(parents=True)
    (root / "alice" / "r" / "a.txt").write_text("a")
    with localhub.serve(root, state=tmp_path / "state") as hub:
        api = HfApi(endpoint=hub.url)
        content = os.urandom(3 * MIB + 7)
        api.upload_file(path_or_fileobj=content, path_in_repo="dir/é 🙂.bin", repo_id="alice/r")
        path = hf_hub_download("alice/r", "dir/é 🙂.bin", endpoint=hub.url, cache_dir=tmp_path / "dl")
        assert Path(path).read_bytes() == content


# ------------------------------------------------------------------ who may write


def test_a_non_loopback_address_needs_a_token_or_an_explicit_flag(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InsecureBindError, match="--token"):
        localhub.serve(root, host="0.0.0.0", state=tmp_path / "s")
    with localhub.serve(root, host="0.0.0.0", token="t", state=tmp_path / "s") as hub:
        assert hub.server.config.token == "t"
    with localhub.serve(root, host="0.0.0.0", allow_anonymous_writes=True, state=tmp_path / "s"):
        pass
    with localhub.serve(root, host="127.0.0.1", state=tmp_path / "s"):  # loopback: as before
        pass


def test_the_cli_refuses_to_start_open_to_the_network(tmp_path):
    (tmp_path / "root").mkdir()
    proc = subprocess.run([sys.executable, "-m", "localhub", "serve", str(tmp_path / "root"), "--host", "0.0.0.0",
                           "--port", "0", "--state", str(tmp_path / "s")], capture_output=True, text=True,
                          cwd=PROJECT, timeout=60, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert proc.returncode == 2
    assert "--token" in proc.stderr and "--allow-anonymous-writes" in proc.stderr


# ------------------------------------------------------------------ connections and 4xx


def test_idle_connections_are_capped(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "a.txt").write_text("a")
    with localhub.serve(root, state=tmp_path / "s") as hub:
        host, port = hub.server.server_address[:2]
        baseline = threading.active_count()
        sockets = []
        try:
            for _ in range(300):
                sockets.append(socket.create_connection((host, port), timeout=5))
            time.sleep(0.5)
            assert threading.active_count() - baseline <= 64 + 2
            late = socket.create_connection((host, port), timeout=5)
            late.sendall(b"GET /api/models/alice/ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert late.recv(100).startswith(b"HTTP/1.1 503")
            late.close()
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if HfApi(endpoint=hub.url).model_info("alice/ok").id == "alice/ok":
                    break
            except Exception:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not recover once the idle connections closed")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/repos/create", b"[" * 100_000),
    ("POST", "/api/repos/create", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("POST", "/api/models/alice/ok/preupload/main", b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("POST", "/api/models/alice/ok/commit/main",
     b'{"key": "header", "value": {"summary": "x"}}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    ("POST", "/api/models/alice/ok/commit/main", b'{"key": "header", "value": {"n": 1' + b"0" * 5000 + b"}}\n"),
    ("GET", "/api/models?cursor=" + "9" * 5000, None),
    ("GET", "/api/models?limit=" + "9" * 5000, None),
    ("GET", "/api/models?cursor=-1", None),
])
def test_hostile_bodies_and_numbers_are_4xx(tmp_path, method, path, body):
    root = tmp_path / "root"
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "a.txt").write_text("a")
    with localhub.serve(root, state=tmp_path / "s") as hub:
        status, reply = raw(hub.url, method, path, body=body)
        assert 400 <= status < 500, (status, reply[:200])
        assert json.loads(reply)["error"]
        assert HfApi(endpoint=hub.url).model_info("alice/ok").id == "alice/ok"  # still serving


def test_a_huge_range_is_416_not_500(tmp_path):
    root = tmp_path / "root"
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "a.txt").write_text("abc")
    with localhub.serve(root, state=tmp_path / "s") as hub:
        status, _ = raw(hub.url, "GET", "/alice/ok/resolve/main/a.txt", headers={"Range": "bytes=0-" + "9" * 5000})
        assert status == 416


@pytest.mark.parametrize("hostile", ["a: " + ":".join(["59"] * 30000), "a: " + ":".join(["59"] * 30000) + ".5"])
def test_a_hostile_card_never_breaks_info_or_listing(tmp_path, hostile):
    root = tmp_path / "root"
    (root / "eve" / "b60").mkdir(parents=True)
    (root / "eve" / "b60" / "README.md").write_text(f"---\n{hostile}\ntags:\n- x\n---\n")
    (root / "alice" / "ok").mkdir(parents=True)
    (root / "alice" / "ok" / "a.txt").write_text("a")
    with localhub.serve(root, state=tmp_path / "s") as hub:
        api = HfApi(endpoint=hub.url)
        started = time.perf_counter()
        assert sorted(m.id for m in api.list_models()) == ["alice/ok", "eve/b60"]
        assert api.model_info("eve/b60").card_data is None
        assert time.perf_counter() - started < 2

