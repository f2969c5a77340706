"""Online serving (``albert-ray serve``): request checks, the token, readiness, and a real server
— real Ray, real Ray Serve, real HTTP on 127.0.0.1, started and stopped by the test — whose
answers equal ``albert-ray predict``'s, batched across concurrent requests."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from albert_ray.inference.serve import (
    Limits,
    RequestError,
    ServeConfig,
    authorized,
    not_ready,
    parse_models,
    parse_texts,
    read_token,
    token_digest,
    usage,
)
from albert_ray.runtime.localcluster import descendants, free_port, is_loopback, listening_sockets

LIMITS = Limits(max_texts=8, max_body_bytes=64 << 10, max_chars=5000)
NER_TEXTS = ["新华社北京电，李明在清华大学发表演讲。", "张伟到上海出差🎓", "控制\x07字符", "长" * 3000]


# ---- request checks, without a server ------------------------------------------------------------
@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            b"not json",
            400,
            'the body is not JSON (Expecting value: line 1 column 1 (char 0)); send {"texts": ["..."]}',
        ),
        (
            b"\xff\xfe",
            400,
            "the body is not JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start "
            'byte); send {"texts": ["..."]}',
        ),
        (b'{"text": "x"}', 400, 'the body has no \'texts\'; send {"texts": ["..."]}'),
        (b'["x"]', 400, 'the body has no \'texts\'; send {"texts": ["..."]}'),
        (b'{"texts": "x"}', 400, '\'texts\' is a string, not a list; send {"texts": ["..."]}'),
        (b'{"texts": []}', 400, "'texts' is empty; send at least one text"),
        (b'{"texts": ["a", 3]}', 400, "texts[1] is a number, not a string"),
        (b'{"texts": ["a", null]}', 400, "texts[1] is a null, not a string"),
        (
            json.dumps({"texts": ["a"] * 9}).encode(),
            413,
            "9 texts in one request, over the limit of 8; split the request",
        ),
    ],
)
def test_a_bad_body_is_refused_with_its_status_and_one_line(body, status, message):
    with pytest.raises(RequestError) as caught:
        parse_texts(body, LIMITS)
    assert (caught.value.status, str(caught.value)) == (status, message)


def test_a_good_body_keeps_every_text_as_sent():
    texts = ["新华社", "\ud800 lone surrogate", "emoji 🎓", "\x07"]
    assert parse_texts(json.dumps({"texts": texts}).encode(), LIMITS) == texts


def test_models_are_named_after_their_folder_unless_named():
    assert parse_models(["out/sample_ner/model", "cls=s3://bucket/runs/cls?region=x", "s3://b/m/ner2/"]) == {
        "model": "out/sample_ner/model",
        "cls": "s3://bucket/runs/cls?region=x",
        "ner2": "s3://b/m/ner2/",
    }
    with pytest.raises(ValueError, match=r"^--model b/model: the name 'model' is given twice; name them"):
        parse_models(["a/model", "b/model"])
    with pytest.raises(ValueError, match=r"^--model a b=...: a model name may hold letters"):
        ServeConfig(models={"a b": "x"})


def test_the_token_file_must_be_private_and_the_replicas_hold_only_its_digest(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    with pytest.raises(ValueError) as caught:
        read_token(str(token))
    assert str(caught.value) == f"--token-file {token}: mode 0644 lets others read it; run chmod 600 {token}"
    token.chmod(0o600)
    digest = token_digest(read_token(str(token)))
    assert "s3cret" not in digest and len(digest) == 64
    assert authorized("Bearer s3cret-token", digest) and authorized("bearer  s3cret-token ", digest)
    assert (
        not authorized("", digest)
        and not authorized("Bearer wrong", digest)
        and not authorized("s3cret-token", digest)
    )
    assert authorized("", None)


def test_readiness_names_the_models_that_do_not_answer():
    class Handle:
        def __init__(self, seconds):
            self.describe = self
            self.seconds = seconds

        def remote(self):
            return asyncio.sleep(self.seconds, result={})

    def failing():
        raise RuntimeError("no such application yet")

    handles = {"ner": lambda: Handle(0), "cls": lambda: Handle(5), "new": failing}
    assert asyncio.run(not_ready(handles, timeout_s=0.2)) == ["cls", "new"]
    assert asyncio.run(not_ready({"ner": lambda: Handle(0)}, timeout_s=0.2)) == []


def test_usage_shows_the_url_the_models_and_a_curl_line():
    cfg = ServeConfig(models={"ner": "s3://key:secret@bucket/ner"}, port=8123, token_file="/etc/token")
    text = usage(
        cfg,
        [
            {
                "name": "ner",
                "task": "ner",
                "labels": ["LOC", "ORG", "PER"],
                "precision": "float32",
                "checksum": "abc",
            }
        ],
    )
    assert text.splitlines()[:3] == [
        "serving 1 model(s) at http://127.0.0.1:8123 with Ray Serve (1 replica(s) each; Ctrl-C stops)",
        "  ner: ner, 3 labels, float32, model abc (s3://bucket/ner)",
        "call it:",
    ]
    assert (
        'curl -s http://127.0.0.1:8123/v1/models/ner:predict -H "Authorization: Bearer $(cat /etc/token)"'
        in text
    )
    assert "secret" not in text
    two = ServeConfig(models={"ner": "m"}, replicas=2, direct_ingress=True)
    direct = {"name": "ner", "task": "ner", "labels": [], "precision": "float32", "checksum": "abc"}
    direct["direct_url"] = "http://127.0.0.1:30001/v1/models/ner:predict"
    assert usage(two, [direct]).splitlines()[2] == (
        "    direct ingress: POST http://127.0.0.1:30001/v1/models/ner:predict "
        "(one replica's: each has a port of its own)"
    )


def test_a_model_directory_that_fails_the_check_is_one_line_before_ray_starts(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "albert_ray.cli", "serve", "--model", f"x={tmp_path}/broken"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"albert-ray serve: error: {tmp_path}/broken is not a model directory: "
        "model.weights.h5, vocab.txt missing (a model directory is written by "
        "'albert-ray train')"
    ]
    assert "Ray" not in out.stdout


# ---- a real server ---------------------------------------------------------------------------------------
def _parsed(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:  # not ours: Ray Serve's proxy before the application is up
        return raw.decode("utf-8", "replace")


def _call(url, body=None, token=None, method=None, timeout=120):
    """(status, parsed JSON (or the text of a body that is not JSON), headers) of one request."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                response.status,
                _parsed(response.read()),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read()), {k.lower(): v for k, v in error.headers.items()}


@pytest.fixture(scope="module")
def small_classify_model(tmp_path_factory) -> str:
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import train_in_process

    out = tmp_path_factory.mktemp("small_classify")
    return train_in_process(
        load_job_config(
            "jobs/configs/sample_classify.yaml",
            [
                f"output_dir={out}",
                "train.epochs=1",
                "model.max_len=64",
                "data.max_train_examples=64",
                "train.log_every=0",
            ],
        )
    )["model_dir"]


def _start(args: list[str], tmp: Path):
    """``albert-ray serve`` on a free port, once its /healthz answers 200; stopped again (with
    everything it started) when it does not get there."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "albert_ray.cli", "serve", "--port", str(port), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if _call(f"{url}/healthz", timeout=5)[0] == 200:
                    return proc, url, log
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"the server did not get ready in 300 s: {log.read_text()}")
    except BaseException:
        _stop(proc)
        raise


def _stop(proc) -> str:
    """Ctrl-C to the server; the processes it started that are still there after a minute."""
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in below):
        time.sleep(1)
    return "".join(f"{pid} " for pid in below if Path(f"/proc/{pid}").exists())


@pytest.fixture(scope="module")
def server(small_ner_model, small_classify_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    token = tmp / "token"
    token.write_text("test-token-1")
    token.chmod(0o600)
    proc, url, log = _start(
        [
            "--model",
            f"ner={small_ner_model}",
            "--model",
            f"cls={small_classify_model}",
            "--precision",
            "float32",
            "--token-file",
            str(token),
            "--max-texts",
            "8",
            "--max-body-bytes",
            str(64 << 10),
            "--max-chars",
            "5000",
            "--direct-ingress",
        ],
        tmp,
    )
    yield {
        "url": url,
        "token": "test-token-1",
        "proc": proc,
        "log": log,
        "ner": small_ner_model,
        "cls": small_classify_model,
    }
    assert _stop(proc) == ""  # every process the server started is gone


def _predicted(model: str, texts: list[str]) -> list[dict]:
    """What ``albert-ray predict`` prints for the texts, one JSON line each."""
    out = subprocess.run(
        [sys.executable, "-m", "albert_ray.cli", "predict", "--model", model, *texts],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.ci
def test_served_results_equal_predict_for_ner_and_a_classifier_in_one_server(server):
    url, token = server["url"], server["token"]
    status, body, _ = _call(f"{url}/v1/models/ner:predict", {"texts": NER_TEXTS}, token)
    assert status == 200
    assert body["results"] == _predicted(server["ner"], NER_TEXTS)
    assert body["results"][0]["text"] == NER_TEXTS[0] and "entities" in body["results"][0]
    texts = ["中国队在比赛中获胜", "新款手机发布"]
    status, body, _ = _call(f"{url}/v1/models/cls:predict", {"texts": texts}, token)
    assert status == 200 and body["results"] == _predicted(server["cls"], texts)
    status, body, _ = _call(f"{url}/v1/models", token=token)
    assert status == 200
    assert [(m["name"], m["task"], m["precision"]) for m in body["models"]] == [
        ("ner", "ner", "float32"),
        ("cls", "classify", "float32"),
    ]
    assert body["models"][0]["labels"] == ["LOC", "ORG", "PER"] and len(body["models"][0]["checksum"]) == 16
    # --direct-ingress: the replica's own port answers the same, token and all, without the proxy
    direct = body["models"][0]["direct_url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:3\d{4}/v1/models/ner:predict", direct), direct
    assert direct in server["log"].read_text()  # printed at start
    assert _call(direct, {"texts": NER_TEXTS}, token)[:2] == (
        200,
        {"results": _predicted(server["ner"], NER_TEXTS)},
    )
    assert _call(direct, {"texts": NER_TEXTS})[0] == 401


@pytest.mark.slow
@pytest.mark.ci
def test_64_concurrent_requests_are_answered_right_in_fewer_forward_passes(server):
    url, token = server["url"], server["token"]
    texts = [f"李明第{i}次到北京大学参观" for i in range(64)]
    expected = _predicted(server["ner"], texts)
    before = _call(f"{url}/v1/models/ner", token=token)[1]["served_by_this_replica"]
    with ThreadPoolExecutor(64) as pool:
        answers = list(
            pool.map(lambda t: _call(f"{url}/v1/models/ner:predict", {"texts": [t]}, token), texts)
        )
    assert [status for status, _, _ in answers] == [200] * 64
    assert [body["results"][0] for _, body, _ in answers] == expected
    after = _call(f"{url}/v1/models/ner", token=token)[1]["served_by_this_replica"]
    assert after["requests"] - before["requests"] == 64 and after["texts"] - before["texts"] == 64
    passes = after["forward_passes"] - before["forward_passes"]
    assert 2 <= passes < 64, passes  # batched across requests (not one pass per request)


@pytest.mark.slow
@pytest.mark.ci
def test_bad_requests_get_their_status_and_one_line_and_the_server_keeps_serving(server):
    url, token = server["url"], server["token"]
    predict = f"{url}/v1/models/ner:predict"
    cases = [
        (
            b"{oops",
            400,
            "the body is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            '(char 1)); send {"texts": ["..."]}',
        ),
        ({"texts": "one"}, 400, '\'texts\' is a string, not a list; send {"texts": ["..."]}'),
        ({"texts": []}, 400, "'texts' is empty; send at least one text"),
        ({"texts": ["a", 1]}, 400, "texts[1] is a number, not a string"),
        ({"texts": ["a"] * 9}, 413, "9 texts in one request, over the limit of 8; split the request"),
        ({"texts": ["长" * 70_000]}, 413, "the body is 420015 bytes, over the limit of 65536"),
    ]
    for body, status, message in cases:
        assert _call(predict, body, token)[:2] == (status, {"error": message})
    assert _call(f"{url}/v1/models/nope:predict", {"texts": ["a"]}, token)[:2] == (
        404,
        {"error": "no model named 'nope'; models: ner, cls"},
    )
    assert _call(predict, method="GET", token=token)[:2] == (
        405,
        {"error": "GET /v1/models/ner:predict: use POST"},
    )
    assert _call(f"{predict}/x", {"texts": ["a"]}, token)[:2] == (
        404,
        {"error": "no route /v1/models/ner:predict/x; this model answers /v1/models/ner:predict"},
    )
    status, body, _ = _call(predict, {"texts": ["李明", "长" * 5001]}, token)
    assert status == 200 and body["results"][1] == {
        "text": "长" * 5001,
        "error": "the text has 5001 characters, over max_chars 5000; split it",
    }
    assert body["results"][0] == _predicted(server["ner"], ["李明"])[0]  # the rest of the request is labeled


@pytest.mark.slow
@pytest.mark.ci
def test_the_token_guards_every_route_but_healthz_and_sockets_are_on_loopback(server):
    url, token = server["url"], server["token"]
    refused = {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"}
    for target, body in (
        (f"{url}/v1/models/ner:predict", {"texts": ["a"]}),
        (f"{url}/v1/models", None),
        (f"{url}/v1/models/ner", None),
    ):
        status, answer, headers = _call(target, body)
        assert (status, answer, headers.get("www-authenticate")) == (401, refused, "Bearer")
        assert _call(target, body, "wrong")[:2] == (401, refused)
        assert _call(target, body, token)[0] == 200
    assert _call(f"{url}/healthz")[:2] == (200, {"status": "ok", "models": ["ner", "cls"]})
    proc = server["proc"]
    sockets = listening_sockets(descendants(proc.pid) | {proc.pid})
    assert int(url.rsplit(":", 1)[1]) in {port for _, _, port in sockets}
    assert [s for s in sockets if not is_loopback(s[1])] == []
    text = server["log"].read_text()
    assert "test-token-1" not in text
    assert text.splitlines()[-3:] == [  # what a user sees after start: no Serve access log without -v
        f'  curl -s {url}/v1/models/ner:predict -H "Authorization: Bearer $(cat {server["log"].parent}/token)" '
        "-H 'Content-Type: application/json' -d '{\"texts\": [\"新华社北京电，李明在清华大学发表演讲。\"]}'",
        f'  curl -s {url}/v1/models -H "Authorization: Bearer $(cat {server["log"].parent}/token)"        '
        "(models, labels, what each replica served)",
        f"  curl -s {url}/healthz           (200 once every model is loaded)",
    ]


@pytest.mark.slow
def test_a_full_queue_is_503_with_retry_after_and_a_slow_answer_504(small_ner_model, tmp_path):
    proc, url, _ = _start(
        [
            "--model",
            f"ner={small_ner_model}",
            "--max-queued-requests",
            "6",  # a replica holds 1 + 6 requests: 17 of the 24 are refused, the last admitted wait > 2 s
            "--max-batch-size",
            "1",
            "--batch-wait-ms",
            "0",
            "--request-timeout",
            "2",
        ],
        tmp_path,
    )
    try:
        long = ["长" * 5000]
        with ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(lambda _: _call(f"{url}/v1/models/ner:predict", {"texts": long}), range(24))
            )
        statuses = {status for status, _, _ in answers}
        assert statuses <= {200, 503, 504} and {503, 504} <= statuses, statuses
        busy = next(a for a in answers if a[0] == 503)
        assert busy[1] == {"error": "model 'ner' has too many requests queued; retry shortly"}
        assert busy[2]["retry-after"] == "1"
        late = next(a for a in answers if a[0] == 504)
        assert late[1] == {"error": "no answer within 2 s; send fewer or shorter texts, or retry"}
        assert _call(f"{url}/healthz")[0] == 200  # still serving
    finally:
        assert _stop(proc) == ""


def test_serve_never_binds_beyond_loopback_by_default():
    assert ServeConfig(models={"m": "x"}).host == "127.0.0.1"
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"


def test_the_serve_config_file_and_the_rayservice_deploy_the_same_applications(tmp_path):
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from albert_ray.inference.serve import index_app_builder, model_app_builder

    root = Path(__file__).resolve().parents[1]
    local = yaml.safe_load((root / "cluster/serve_config.yaml").read_text())
    service = yaml.safe_load((root / "cluster/kuberay/rayservice.yaml").read_text())
    remote = yaml.safe_load(service["spec"]["serveConfigV2"])
    for config in (local, remote):
        ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay check
    assert (local["http_options"]["host"], remote["http_options"]["host"]) == ("127.0.0.1", "0.0.0.0")
    for app in remote["applications"]:  # the same applications, with the token
        assert app["args"].pop("token_file") == "/etc/albert-ray/token"
    assert remote["applications"] == local["applications"]
    index, *models = local["applications"]
    assert (index["name"], index["route_prefix"], index["args"]["models"]) == (
        "albert-ray",
        "/",
        ["ner", "news"],
    )
    assert [(m["name"], m["route_prefix"], m["args"]["name"]) for m in models] == [
        ("albert-ray-ner", "/v1/models/ner:predict", "ner"),
        ("albert-ray-news", "/v1/models/news:predict", "news"),
    ]
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    volume = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["volumes"][0]
    assert volume["secret"]["defaultMode"] == 0o400  # read_token refuses a token others can read
    # the builders take the file's args as they are (the model swapped for one on this disk)
    args = dict(models[0]["args"], model=str(root / "tests/data/model_before_mixed_precision"))
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o400)
    assert isinstance(model_app_builder(args), Application)
    assert isinstance(model_app_builder({**args, "token_file": str(token)}), Application)
    assert isinstance(index_app_builder({**index["args"], "token_file": str(token)}), Application)
