"""edgel2 serve: the real server, started on a free loopback port, spoken to over HTTP.

Every endpoint answers in the shapes of the Open Inference Protocol (KServe v2) or of
/v1/classify, with the same results as ``Classifier``; every fault gets its status and a JSON
body; SIGTERM finishes what is in flight and exits 0; the page works in a real headless
browser (Debian's chromium, driven by Selenium)."""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
from edgel2.runtime import Classifier, shipped_model  # noqa: E402

MODEL = shipped_model("resnet18-int8.onnx")
NAME = "resnet18-int8"
START_TIMEOUT_S = 60


class Server:
    """``edgel2 serve`` in a child process on a free port."""

    def __init__(self, *args: str, model: Path = MODEL, env: dict | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgel2", "serve", "--model", str(model), "--engine",
             "onnxruntime", "--threads", "1", "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # until it answers: a readiness probe, as a load balancer would send
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"edgel2 serve did not start: {self.proc.stderr.read()}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict, bytes]:
        return self.request("GET", path)

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        status, _, raw = self.request(method, path, data, **kw)
        return status, json.loads(raw)

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[2].decode()
        match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
              f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
             + data + b"\r\n" for name, data in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def images(data_dir):
    files = sorted((data_dir / "test").glob("*/000[0-1].jpg"))[:8]
    return [(f.name if i % 2 else f"{f.parent.name}-{f.name}", f.read_bytes())
            for i, f in enumerate(files)]


@pytest.fixture(scope="module")
def classifier():
    return Classifier(MODEL, engine="onnxruntime")


def test_health_and_server_metadata(server):
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.json("GET", f"/v2/models/{NAME}/ready") == (200, {"name": NAME, "ready": True})
    status, body = server.json("GET", "/v2")
    assert status == 200 and body["name"] == "edgel2" and body["extensions"] == []


def test_model_metadata_has_the_v2_shape_and_the_files_metadata(server, classifier):
    status, body = server.json("GET", f"/v2/models/{NAME}")
    assert status == 200
    assert body["name"] == NAME and body["versions"] == ["1"]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert body["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "unknown_score", "datatype": "FP32", "shape": [-1, 1]},
                               {"name": "unknown", "datatype": "BOOL", "shape": [-1, 1]}]
    parameters = body["parameters"]
    assert parameters["class_names"] == classifier.class_names
    assert parameters["normalization"] == classifier.metadata["normalization"]
    assert parameters["accuracy"] == classifier.metadata["accuracy"]
    assert parameters["calibration"] == {"temperature": classifier.temperature,
                                         "unsmooth": classifier.unsmooth}
    assert parameters["unknown_threshold"] == classifier.unknown_threshold


def test_the_server_says_which_engine_auto_measured_fastest_and_why(tmp_path):
    env = {**os.environ, "EDGEL2_ENGINE_PROBE": "1", "EDGEL2_CACHE": str(tmp_path)}
    server = Server("--engine", "auto", model=MODEL.parent, env=env)  # the shipped pair
    try:
        parameters = server.json("GET", f"/v2/models/{NAME}")[1]["parameters"]
    finally:
        assert server.stop() == 0
    choice = parameters["engine_choice"]
    assert (choice["workload"], choice["batch"], choice["source"]) == ("latency", 1, "measured")
    assert choice["chosen"].startswith(parameters["engine"] + " resnet18-int8.")
    # --threads 1: each engine once, OpenVINO compiled for latency
    assert sorted(m["candidate"] for m in choice["measured"]) == [
        "litert resnet18-int8.tflite (1 thread)", "onnxruntime resnet18-int8.onnx (1 thread)",
        "openvino resnet18-int8.onnx (1 thread, LATENCY hint)"]
    assert all(re.fullmatch(r"\d+\.\d\d ms", m["figure"]) for m in choice["measured"])
    log = server.proc.stderr.read()
    assert f"; auto for latency: {choice['chosen']}, batch-1 median " in log.splitlines()[0]


def test_classify_gives_what_classifier_predict_gives(server, classifier, images):
    body, headers = multipart(images)
    status, response = server.json("POST", "/v1/classify?top_k=3", body, headers=headers)
    assert status == 200 and response["model"] == NAME
    expected = classifier.predict([data for _, data in images], top_k=3)
    assert [r["file"] for r in response["results"]] == [name for name, _ in images]
    for result, want in zip(response["results"], expected):
        assert [p["label"] for p in result["predictions"]] == [label for label, _ in want]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(
            [p for _, p in want], abs=2e-6)
        assert result["unknown"] is want.unknown
        assert result["unknown_score"] == pytest.approx(want.unknown_score, abs=2e-6)


def test_classify_takes_one_image_as_the_raw_body(server, classifier, images):
    status, response = server.json("POST", "/v1/classify", images[0][1])
    assert status == 200
    (result,) = response["results"]
    assert result["file"] == "body" and len(result["predictions"]) == 5  # --top-k default
    assert result["predictions"][0]["label"] == classifier.predict(images[0][1])[0][0][0]


def test_v2_infer_returns_the_models_logits(server, classifier, images):
    pixels = np.stack([classifier.preprocess(data) for _, data in images[:3]])
    request = {"id": "req-7", "inputs": [{"name": "images", "datatype": "UINT8",
                                          "shape": list(pixels.shape),
                                          "data": pixels.ravel().tolist()}]}
    status, response = server.json("POST", f"/v2/models/{NAME}/infer", request)
    assert status == 200
    assert response["id"] == "req-7" and response["model_name"] == NAME
    output, score, unknown = response["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [3, 10])
    assert (score["name"], score["datatype"], score["shape"]) == ("unknown_score", "FP32", [3, 1])
    assert (unknown["name"], unknown["datatype"], unknown["shape"]) == ("unknown", "BOOL", [3, 1])
    logits = np.array(output["data"], np.float32).reshape(3, 10)
    scores = np.array(score["data"], np.float32).reshape(3)
    expected = classifier.engine.run(pixels)
    assert np.allclose(logits, expected[:, :10], atol=1e-5)
    assert np.allclose(scores, expected[:, 10], atol=1e-5)
    assert unknown["data"] == [bool(s > classifier.unknown_threshold) for s in expected[:, 10]]
    # nested data is read the same
    request["inputs"][0]["data"] = pixels.tolist()
    assert server.json("POST", f"/v2/models/{NAME}/infer", request)[1]["outputs"] == \
        response["outputs"]


@pytest.mark.parametrize("tensor, message", [
    ({"datatype": "FP32", "shape": [1, 32, 32, 3], "data": [0] * 3072}, 'datatype must be "UINT8"'),
    ({"datatype": "UINT8", "shape": [1, 16, 16, 3], "data": [0] * 768}, "shape must be [N, 32, 32, 3]"),
    ({"datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 5}, "3072 whole numbers"),
    ({"datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [256] * 3072}, "in 0..255"),
    ({"datatype": "UINT8", "shape": [1, 32, 32, 3], "data": ["x"] * 3072}, "whole numbers"),
])
def test_v2_infer_refuses_a_bad_tensor_with_400_and_a_message(server, tensor, message):
    status, body = server.json("POST", f"/v2/models/{NAME}/infer",
                               {"inputs": [{"name": "images", **tensor}]})
    assert status == 400 and message in body["error"]


def test_faults_get_their_status_and_a_json_message(server, images):
    assert server.json("GET", "/v2/models/other") == (
        404, {"error": "unknown model 'other'; this server has 'resnet18-int8'"})
    assert server.json("POST", "/v2/models/other/infer", {})[0] == 404
    assert server.json("GET", "/nowhere") == (404, {"error": "no route GET /nowhere"})
    assert server.json("GET", "/v1/classify")[0] == 405
    assert server.json("POST", f"/v2/models/{NAME}/infer", b"{not json")[0] == 400
    assert server.json("POST", "/v1/classify?top_k=0", images[0][1])[0] == 400
    assert server.json("POST", "/v1/classify", b"") == (
        400, {"error": "no image: send files as multipart/form-data, or one image as the body"})


def test_an_undecodable_file_gets_422_with_its_reason_and_the_others_their_results(server, images):
    body, headers = multipart([images[0], ("notes.txt", b"not an image"),
                               ("cut.jpg", images[1][1][:100])])
    status, response = server.json("POST", "/v1/classify", body, headers=headers)
    assert status == 422
    good, text, cut = response["results"]
    assert "predictions" in good
    assert text == {"file": "notes.txt", "error": "not an image edgel2 reads (JPEG, PNG, BMP, "
                                                  "GIF, WebP, TIFF, PPM/PGM/PBM or ICO)"}
    assert cut["file"] == "cut.jpg" and "error" in cut


def test_metrics_count_requests_latency_batches_and_queue(server, images):
    before = server.metric('edgel2_requests_total{route="classify",status="200"}')
    images_before = server.metric("edgel2_images_total")
    body, headers = multipart(images[:4])
    assert server.request("POST", "/v1/classify", body, headers)[0] == 200
    assert server.metric('edgel2_requests_total{route="classify",status="200"}') == before + 1
    assert server.metric("edgel2_images_total") == images_before + 4
    text = server.get("/metrics")[2].decode()
    for name in ("edgel2_request_seconds_bucket", "edgel2_batch_size_bucket",
                 "edgel2_queue_depth", "edgel2_in_flight"):
        assert name in text
    assert server.metric("edgel2_batch_size_count") >= 1


def test_images_over_the_threshold_are_counted_as_unknown(server, classifier):
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
    files = [(f"noise{i}.png", _encode_png(pixels)) for i, pixels in enumerate(noise)]
    flagged = sum(bool(p.unknown) for p in classifier.predict(list(noise)))
    assert flagged > 0  # uniform noise is far from every class
    before = server.metric("edgel2_unknown_images_total")
    body, headers = multipart(files)
    status, response = server.json("POST", "/v1/classify", body, headers=headers)
    assert status == 200
    assert sum(r["unknown"] for r in response["results"]) == flagged
    assert server.metric("edgel2_unknown_images_total") == before + flagged


def test_no_unknown_serves_the_logits_alone_and_no_verdicts(images):
    s = Server("--no-unknown")
    try:
        assert s.json("GET", f"/v2/models/{NAME}")[1]["outputs"] == [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        (result,) = s.json("POST", "/v1/classify", images[0][1])[1]["results"]
        assert (result["unknown"], result["unknown_score"]) == (None, None)
    finally:
        assert s.stop() == 0


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.write_bytes(_encode_png(pixels))


def _encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_page_is_served(server):
    status, headers, body = server.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<input id="file" type="file"' in body and NAME.encode() in body


# --- limits that need a server of their own ------------------------------------------------

def test_a_body_over_the_limit_gets_413_and_a_full_queue_gets_503_with_retry_after(images):
    limited = Server("--max-body-mb", "0.05", "--max-queue", "2", "--max-batch", "1")
    try:
        status, body = limited.json("POST", "/v1/classify", b"x" * 60_000)
        assert status == 413 and "over the limit of 0.05 MiB" in body["error"]
        many, headers = multipart([images[i % 8] for i in range(40)])
        assert len(many) < 0.05 * 2**20
        status, response_headers, raw = limited.request("POST", "/v1/classify", many, headers)
        assert status == 503 and response_headers["retry-after"] == "1"
        assert "busy: 2 requests are waiting" in json.loads(raw)["error"]
        assert limited.metric("edgel2_batch_size_count") == 0  # refused whole: no model work
        assert limited.json("POST", "/v1/classify", images[0][1])[0] == 200  # and it recovers
        assert limited.metric("edgel2_batch_size_count") == 1
    finally:
        assert limited.stop() == 0


def test_a_client_that_disconnects_leaves_the_server_serving_others(server, images):
    body, headers = multipart([images[i % 8] for i in range(32)])
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\n\r\n").encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head + body)  # and gone before the answer
    status, response = server.json("POST", "/v1/classify", images[0][1])
    assert status == 200 and response["results"][0]["predictions"]


def _sigterm_during_a_request(image: bytes, *server_args: str) -> tuple[Server, dict]:
    """Start a server, send it one request, SIGTERM it once the request is in; the server
    (exited) and the client's result."""
    slow = Server(*server_args)
    result = {}

    def client():
        result["status"], result["body"] = slow.json("POST", "/v1/classify", image)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 10
    while slow.metric('edgel2_in_flight{route="classify"}') < 1:  # the request is in
        assert time.monotonic() < deadline
    slow.proc.send_signal(signal.SIGTERM)
    assert slow.proc.wait(timeout=30) == 0
    thread.join(timeout=30)
    return slow, result


def test_sigterm_finishes_the_request_in_flight_and_exits_0(images):
    _, result = _sigterm_during_a_request(images[0][1], "--max-delay-ms", "1500",
                                          "--max-batch", "64")
    assert result["status"] == 200 and result["body"]["results"][0]["predictions"]


def test_serve_with_a_bad_model_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"\x08garbage")
    proc = subprocess.run([sys.executable, "-m", "edgel2", "serve", "--model", str(bad),
                           "--engine", "onnxruntime"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgel2: error: ") and proc.stderr.count("\n") == 1


# --- the page in a real headless browser ---------------------------------------------------

def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver") else None)
    return (browser, driver) if browser and driver else None


def test_the_page_classifies_an_uploaded_image_in_a_headless_browser(server, classifier,
                                                                     data_dir, tmp_path):
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing in CI (scripts/setup.sh installs them)")
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=900,700")
    browser = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        image = sorted((data_dir / "test" / "ship").glob("*.jpg"))[0]
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".prediction .label"))
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".prediction .label")]
        shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".prediction .probability")]
        screenshot = browser.get_screenshot_as_png()  # the page as a user sees it, answered
        known_banner = browser.find_element(By.ID, "unknown").text
        # an image of none of the classes gets the unknown banner above its closest classes
        noise = tmp_path / "noise.png"
        _write_png(noise, np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
        browser.find_element(By.ID, "file").send_keys(str(noise))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "unknown").text)
        unknown_banner = browser.find_element(By.ID, "unknown").text
    finally:
        browser.quit()
    expected = classifier.predict(image, top_k=5)[0]
    assert labels == [label for label, _ in expected]
    assert shown == [f"{100 * p:.1f} %" for _, p in expected]
    assert known_banner == ""
    (noise_prediction,) = classifier.predict(noise)
    assert noise_prediction.unknown
    assert unknown_banner == ("Unknown: this image looks like none of the classes (score "
                              f"{round(noise_prediction.unknown_score, 6):.2f}); the closest are below.")
    from PIL import Image

    width, height = Image.open(io.BytesIO(screenshot)).size  # the viewport of a 900x700 window
    assert width == 900 and 400 < height <= 700
    # EDGEL2_SCREENSHOTS=docs/img refreshes the documentation's picture of the page
    if os.environ.get("EDGEL2_SCREENSHOTS"):
        (Path(os.environ["EDGEL2_SCREENSHOTS"]) / "serve-page.png").write_bytes(screenshot)


def test_workers_serve_behind_one_port_and_stop_on_sigterm(classifier, images):
    pool = Server("--workers", "2")
    try:
        for _name, data in images[:4]:
            status, response = pool.json("POST", "/v1/classify?top_k=1", data)
            assert status == 200
            assert response["results"][0]["predictions"][0]["label"] == \
                classifier.predict(data)[0][0][0]
    finally:
        assert pool.stop() == 0


# --- one client cannot take the server down --------------------------------------------------

def _png(width: int, height: int) -> bytes:
    return _encode_png(np.zeros((height, width), np.uint8))  # grey


def _answer(s: socket.socket) -> bytes:
    """All the server sends until it closes the connection (or 30 s pass)."""
    s.settimeout(30)
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def guarded():
    s = Server("--max-body-mb", "0.5", "--max-images", "4", "--max-request-mpx", "0.05",
               "--client-timeout-s", "0.5")
    yield s
    assert s.stop() == 0


def test_a_chunked_multipart_upload_counts_every_byte_against_the_body_limit(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
                + b"\0" * 600_000)
        s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"request body over the limit of 0.5 MiB (--max-body-mb)"' in answer


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(guarded):
    body, headers = multipart([("a.png", _png(200, 200)), ("b.png", _png(200, 200))])
    status, response = guarded.json("POST", "/v1/classify", body, headers=headers)
    assert status == 413
    assert response["error"] == ("0.1 megapixels in one request; the limit is 0.05 "
                                 "(--max-request-mpx)")


def test_too_many_images_in_one_request_get_413(guarded, images):
    body, headers = multipart([images[i] for i in range(5)])
    status, response = guarded.json("POST", "/v1/classify", body, headers=headers)
    assert status == 413
    assert response["error"] == "5 files in one request; the limit is 4 (--max-images)"
    tensor = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [5, 32, 32, 3],
                          "data": [0] * (5 * 32 * 32 * 3)}]}
    status, response = guarded.json("POST", f"/v2/models/{NAME}/infer", tensor)
    assert status == 413
    assert response["error"] == "5 images in one request; the limit is 4 (--max-images)"


def test_a_v2_body_too_long_for_max_images_is_refused_unparsed(guarded):
    body = b'{"inputs": [' + b" " * (4 * 32 * 32 * 3 * 6 + 65536) + b"]}"
    status, response = guarded.json("POST", f"/v2/models/{NAME}/infer", body)
    assert status == 413
    assert response["error"] == ("a v2 body over 0.1 MiB is more than 4 images "
                                 "(--max-images) can take in compact JSON")


def test_deeply_nested_json_is_a_400_not_a_server_error(guarded):
    status, response = guarded.json("POST", f"/v2/models/{NAME}/infer", b"[" * 100_000)
    assert status == 400
    assert response["error"] == "the body is not JSON edgel2 reads: nested too deeply"


@pytest.mark.parametrize("extra, what", [
    (b"X-Big: " + b"a" * 70_000 + b"\r\n", "one large header"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), "101 header lines"),
])
def test_oversized_headers_get_431_and_the_connection_closed(guarded, extra, what):
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 431 "), what
    assert b"request headers over the limit of 64 KiB or 100 lines" in answer
    assert guarded.get("/v2/health/live")[0] == 200


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n",
                                  b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 1000\r\n\r\nonly this"])
def test_a_client_silent_mid_request_is_disconnected(guarded, sent):
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(sent)
        start = time.monotonic()
        answer = _answer(s)  # returns when the server closes the connection
    assert time.monotonic() - start < 10  # --client-timeout-s 0.5, not forever
    assert not answer.startswith(b"HTTP/1.1 200")


def test_the_page_escapes_the_model_name(tmp_path):
    """A name from a file's metadata is shown as text (--name itself refuses such names)."""
    from edgel2.export.onnx import embed_metadata
    from edgel2.runtime import read_metadata

    model = tmp_path / "hostile.onnx"
    shutil.copyfile(MODEL, model)
    embed_metadata(model, {**read_metadata(model), "name": "<b>model"})
    hostile = Server(model=model)
    try:
        status, _, body = hostile.get("/")
    finally:
        assert hostile.stop() == 0
    assert status == 200
    assert b"<b>model" not in body and b"&lt;b&gt;model" in body


def test_a_request_still_running_when_the_grace_period_ends_gets_a_json_503(images):
    slow, result = _sigterm_during_a_request(images[0][1], "--max-delay-ms", "10000",
                                             "--max-batch", "64", "--grace-s", "0.5")
    assert result["status"] == 503
    assert result["body"] == {"error": "the server is shutting down; retry"}
    assert "Traceback" not in slow.proc.stderr.read()


@pytest.mark.parametrize("args, message", [
    (["--max-delay-ms", "1e13"], "Invalid value for '--max-delay-ms'"),
    (["--max-body-mb", "inf"], "Invalid value for '--max-body-mb'"),
    (["--max-body-mb", "nan"], "--max-body-mb must be a number in (0, 1024]"),
])
def test_serve_options_out_of_range_are_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "edgel2", "serve", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"edgel2: error: {message}") and proc.stderr.count("\n") == 1


def test_a_port_in_use_is_one_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "edgel2", "serve", "--model", str(MODEL),
                               "--engine", "onnxruntime", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"edgel2: error: cannot listen on 127.0.0.1:{port}: "
                                            "Address already in use")
    assert "Traceback" not in proc.stderr


def test_port_0_prints_the_port_the_system_chose():
    proc = subprocess.Popen([sys.executable, "-m", "edgel2", "serve", "--model", str(MODEL),
                             "--engine", "onnxruntime", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the first line says where the model is served
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v2/models/", line).group(1))
        assert port != 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_several_workers_with_a_bad_model_exit_1_with_one_line(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "edgel2", "serve", "--model", str(empty),
                           "--workers", "2", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgel2: error: ") and proc.stderr.count("\n") == 1
