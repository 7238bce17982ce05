"""Weight downloads: atomic files from a local server, resolve_weights fetching when allowed, clear errors when not."""

import functools
import http.server
import threading

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


def test_download_writes_the_whole_file_or_nothing(local_server, tmp_path):
    url, served = local_server
    payload = bytes(range(256)) * 5000
    (served / "weights.h5").write_bytes(payload)
    target = tmp_path / "models" / "weights.h5"
    assert downloads.download_file(url + "weights.h5", target, progress=False) == target
    assert target.read_bytes() == payload
    with pytest.raises(OSError, match="404"):
        downloads.download_file(url + "missing.h5", tmp_path / "models" / "missing.h5", progress=False)
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["weights.h5"]  # no .part left


def test_missing_imagenet_weights_are_downloaded_into_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(downloads.OFFLINE_VARIABLE)
    calls = []

    def fake_download(url, target, progress=True):
        calls.append((url, target))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return target

    monkeypatch.setattr(downloads, "download_file", fake_download)
    spec = get_backbone_spec("resnet50")
    expected = tmp_path / "keras_home" / "models" / spec.weights_file
    assert not has_imagenet_weights("resnet50")  # asking never downloads
    assert resolve_weights("resnet50", "imagenet") == str(expected)
    assert calls == [(spec.weights_url, expected)]
    assert resolve_weights("resnet50", "imagenet") == str(expected) and len(calls) == 1  # found the second time


def test_failed_or_forbidden_download_stops_naming_file_folder_and_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(downloads.OFFLINE_VARIABLE)

    def no_network(url, target, progress=True):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(downloads, "download_file", no_network)
    with pytest.raises(FileNotFoundError, match=r"Keras wants the file vgg19_weights_tf_dim_ordering_tf_kernels_notop\.h5 "
                                                r"in .*keras_home/models .*and downloading it failed \(<urlopen error"):
        resolve_weights("vgg19", "imagenet")
    monkeypatch.setenv(downloads.OFFLINE_VARIABLE, "1")
    monkeypatch.setattr(downloads, "download_file", lambda *args, **kwargs: pytest.fail("must not download"))
    with pytest.raises(FileNotFoundError, match=r"and downloads are off \(FUSIONPIPE_OFFLINE is set\)\. Download it from "
                                                r"https://storage\.googleapis\.com/.*vgg19"):
        resolve_weights("vgg19", "imagenet")
    assert not (tmp_path / "keras_home" / "models" / get_backbone_spec("vgg19").weights_file).exists()
