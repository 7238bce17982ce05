"""Weight downloads: keras.utils.get_file from a local server with the published hash, whole files or nothing,
resolve_weights fetching when allowed, clear errors when not."""

import functools
import hashlib
import http.server
import threading

import keras
import pytest

from features import downloads
from features.backbones import get_backbone_spec, has_imagenet_weights, resolve_weights


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


def test_fetch_checks_the_hash_and_writes_the_whole_file_or_nothing(local_server, tmp_path):
    url, served = local_server
    payload = bytes(range(256)) * 5000
    (served / "weights.h5").write_bytes(payload)
    models = tmp_path / "models"
    target = models / "weights.h5"
    md5, sha256 = hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()
    assert downloads.fetch_file(url + "weights.h5", target, md5) == target
    assert target.read_bytes() == payload
    target.unlink()
    assert downloads.fetch_file(url + "weights.h5", target, sha256).read_bytes() == payload  # sha256 works too
    target.unlink()
    with pytest.raises(OSError, match=rf"^the file from {url}weights\.h5 does not match Keras's published hash "
                                      rf"{'0' * 32} \(.*\); it was not kept$"):
        downloads.fetch_file(url + "weights.h5", target, "0" * 32)
    with pytest.raises(OSError, match="404"):
        downloads.fetch_file(url + "missing.h5", models / "missing.h5", md5)
    assert list(models.iterdir()) == []  # no half, wrong or staging file left


def test_missing_imagenet_weights_are_fetched_with_kerass_hash_into_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(downloads.OFFLINE_VARIABLE)
    calls = []

    def fake_get_file(fname, origin, file_hash=None, cache_subdir="datasets", cache_dir=None, **kwargs):
        calls.append((fname, origin, file_hash))
        path = tmp_path / "fake_download"
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    spec = get_backbone_spec("resnet50")
    expected = tmp_path / "keras_home" / "models" / spec.weights_file
    assert not has_imagenet_weights("resnet50")  # asking never downloads
    assert resolve_weights("resnet50", "imagenet") == str(expected)
    assert calls == [(spec.weights_file, spec.weights_url, "4d473c1dd8becc155b73f8504c6f6626")]
    assert resolve_weights("resnet50", "imagenet") == str(expected) and len(calls) == 1  # found the second time
    assert expected.read_bytes() == b"weights"


def test_a_wrong_hash_or_failed_download_stops_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(downloads.OFFLINE_VARIABLE)

    def wrong_file(fname, origin, file_hash=None, cache_subdir="datasets", cache_dir=None, **kwargs):
        raise ValueError(f"Incomplete or corrupted file detected. The md5 file hash does not match the provided "
                         f"value of {file_hash}.")

    monkeypatch.setattr(keras.utils, "get_file", wrong_file)
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights("vgg19", "imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert "downloading it failed (the file from https://storage.googleapis.com/" in message
    assert "does not match Keras's published hash 253f8cb515780f3b799900260a226db6" in message

    def no_network(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(FileNotFoundError, match=r"Keras wants the file vgg19_weights_tf_dim_ordering_tf_kernels_notop\.h5 "
                                                r"in .*keras_home/models .*and downloading it failed \(URL fetch failure"):
        resolve_weights("vgg19", "imagenet")
    monkeypatch.setenv(downloads.OFFLINE_VARIABLE, "1")
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: pytest.fail("must not download"))
    with pytest.raises(FileNotFoundError, match=r"and downloads are off \(FUSIONPIPE_OFFLINE is set\)\. Download it from "
                                                r"https://storage\.googleapis\.com/.*vgg19"):
        resolve_weights("vgg19", "imagenet")
    assert list((tmp_path / "keras_home" / "models").iterdir()) == []
