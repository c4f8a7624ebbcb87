"""Issue 9 item 2 on the node: a node never trusts the marketplace's check of a model.

A hostile ONNX model (an initializer whose bytes live in an "external data" file) that reaches
a node anyway (published before the check existed, or a tampered database) must be refused
before any ONNX Runtime session opens; the node's working directory is an empty private folder
and its sessions resolve file paths only inside it, so even an unchecked model finds nothing.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from cyxwiz.catalog.models import ModelFile
from cyxwiz.inference.models import Node
from cyxwiz.node.runtime import LoadError, build_model, prepare_workdir, session_options
from cyxwiz.storage import blob_store_from_settings
from tests.model_files import leaking_constant_onnx, leaking_onnx, leaking_subgraph_onnx
from tests.node.conftest import Stack, TinyModels, free_socket, wait_for

SECRET = b"TOP-SECRET-KEY!!"  # 16 bytes, the leaking models' tensor length


def _inject(stack: Stack, name: str, hostile: bytes, tiny_models: TinyModels) -> str:
    """Publish a valid model, then swap its file for ``hostile`` behind the marketplace's back
    (what a model published before publish-time checks existed looks like to a node)."""
    vid = stack.publish(name, {"model.onnx": tiny_models.iris})
    info = blob_store_from_settings(stack.settings).put_bytes(hostile)
    with stack.db.session() as s:
        row = s.scalars(
            select(ModelFile).where(
                ModelFile.version_id == uuid.UUID(vid), ModelFile.path == "model.onnx"
            )
        ).one()
        row.sha256, row.size = info.address, info.size
    return vid


def _leak_request() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [16], "datatype": "UINT8", "data": [0] * 16}]}


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "onnx_external_data", body
    assert SECRET.decode() not in r.text
    assert str(list(SECRET)[:4])[1:-1] not in r.text


def test_node_refuses_an_external_data_model_before_opening_a_session(
    stack: Stack, tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the secret sits in the process's working directory, where ORT looked for external data
    monkeypatch.chdir(tmp_path)
    (tmp_path / "master.key").write_bytes(SECRET)
    vid = _inject(stack, "leaky", leaking_onnx("master.key"), tiny_models)
    node = stack.start_node("careful")
    stack.assign(node, vid)
    r = httpx.post(
        f"{node.url}/v2/models/{vid}/infer", json=_leak_request(), headers=node.headers()
    )
    _refused(r)
    assert node.agent.models.peek(vid) is None  # nothing was loaded


def test_cyxwiz_node_runs_in_an_empty_private_directory(
    stack: Stack, tiny_models: TinyModels, tmp_path: Path
) -> None:
    """The real agent process, started from a folder holding the operator's data (the default
    layout: ./cyxwiz-data/master.key), cannot be made to read it."""
    home = tmp_path / "operator"
    (home / "cyxwiz-data").mkdir(parents=True)
    (home / "cyxwiz-data" / "master.key").write_bytes(SECRET)
    vid = _inject(stack, "leaky-cli", leaking_onnx("cyxwiz-data/master.key"), tiny_models)
    node_id, token = stack.create_node("cli-safety")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    cache = home / "cache"
    env = {
        **os.environ,
        "CYXWIZ_NODE_TOKEN": token,
        "CYXWIZ_NODE_MARKETPLACE": stack.url,
        "CYXWIZ_NODE_CACHE_DIR": "cache",  # relative to where the operator started it
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyxwiz", "node", "--port", str(port), "--capacity", "1"],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30)
        workdir = cache / "work"
        assert Path(os.readlink(f"/proc/{proc.pid}/cwd")) == workdir.resolve()
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert list(workdir.iterdir()) == []
        r = stack.http.put(
            f"/api/v1/nodes/{node_id}/assignments/{vid}", headers=stack.admin.headers
        )
        assert r.status_code == 200, r.text
        with stack.db.session() as s:
            secret = s.scalar(select(Node.gateway_secret).where(Node.id == uuid.UUID(node_id)))
        r = httpx.post(
            f"{url}/v2/models/{vid}/infer",
            json=_leak_request(),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        _refused(r)
        # the cache still works from the new working directory (paths were made absolute)
        assert any((cache / "blobs").iterdir())
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


@pytest.mark.parametrize("build", [leaking_onnx, leaking_constant_onnx, leaking_subgraph_onnx])
def test_build_model_checks_the_bytes_itself(
    build: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "master.key").write_bytes(SECRET)
    with pytest.raises(LoadError) as caught:
        build_model(
            name="v",
            model="o/m",
            version="1",
            model_bytes=build("master.key"),
            intra_op_threads=1,
            workdir=prepare_workdir(tmp_path / "work"),
        )
    assert caught.value.code == "onnx_external_data"
    assert caught.value.status == 422
    with pytest.raises(LoadError) as caught:
        build_model(
            name="v",
            model="o/m",
            version="1",
            model_bytes=os.urandom(2048),
            intra_op_threads=1,
            workdir=tmp_path / "work",
        )
    assert caught.value.code == "invalid_model_file"


def test_session_options_alone_keep_an_unchecked_model_from_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: even a session opened without the check resolves external data only
    inside the empty workdir, so the file beside the process is out of reach."""
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    (tmp_path / "master.key").write_bytes(SECRET)
    plain = ort.SessionOptions()
    plain.log_severity_level = 4
    leaked = ort.InferenceSession(leaking_onnx("master.key"), plain).run(
        None, {"x": np.zeros(16, dtype=np.uint8)}
    )[0]
    assert bytes(leaked) == SECRET  # the attack, as ORT behaves by default
    options = session_options(intra_op_threads=1, workdir=prepare_workdir(tmp_path / "work"))
    options.log_severity_level = 4
    for location in ("master.key", "../master.key", str(tmp_path / "master.key")):
        with pytest.raises(Exception, match="External data path"):
            ort.InferenceSession(leaking_onnx(location), options)


def test_the_workdir_is_private_and_emptied(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    (work / "left-over").write_bytes(b"x")
    (work / "sub").mkdir()
    (work / "link").symlink_to(tmp_path)
    real = prepare_workdir(work)
    assert real == work.resolve()
    assert list(work.iterdir()) == []
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    assert tmp_path.exists()  # a symlink inside is removed, never followed
    link = tmp_path / "elsewhere"
    link.symlink_to(tmp_path / "target-dir")
    (tmp_path / "target-dir").mkdir()
    with pytest.raises(RuntimeError):
        prepare_workdir(link)
