"""Online serving with Ray Serve: ``albert-ray serve``, and applications for ``serve run`` /
``serve deploy``.

Each model is an application of its own whose route prefix is its predict route: the model's
replicas answer HTTP themselves (Ray Serve's proxy hands them the request; with direct ingress
they listen on ports of their own), with no gateway hop between. A replica loads its model once;
texts from concurrent requests are batched (``@serve.batch``) into a few forward passes, the
windows inside a batch sorted by length as :class:`~albert_ray.inference.labeler.Labeler` does.
One more application at ``/``, the index, answers readiness and the model list.

Routes (JSON; an error is ``{"error": "<one line>"}``):

* ``POST /v1/models/<name>:predict`` ``{"texts": [...]}`` -> ``{"results": [...]}``, one result
  per text in order, each as ``albert-ray predict`` prints it; a text over ``max_chars`` gets
  ``{"error": ...}`` in its place and the others are labeled;
* ``GET /v1/models``, ``GET /v1/models/<name>``: name, task, labels, encoder, precision, model
  checksum, and what each replica has served;
* ``GET /healthz``: 200 once every model is loaded and warmed, else 503 (never needs the token).

TensorFlow is imported by the model replicas only, never by the index or the driver. (No
``from __future__ import annotations`` here: FastAPI reads the routes' annotations as objects.)
"""

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

from albert_ray import modeldir, paths
from albert_ray.spec import PRECISIONS

log = logging.getLogger(__name__)

APP_NAME = "albert-ray"
MODEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


# ---- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how long it may take."""

    max_body_bytes: int = 1 << 20  # a larger body: 413
    max_texts: int = 256  # more texts in one request: 413
    max_chars: int = 10_000  # a longer text: an error in its place in the results
    request_timeout_s: float = 30.0  # no answer by then: 504
    retry_after_s: int = 1  # the Retry-After of a 503 when a model's queue is full


@dataclass(frozen=True)
class ServeConfig:
    """An ``albert-ray serve`` run. ``models``: ``{name: model directory or URI}``."""

    models: dict[str, str]
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    cpus_per_replica: float = 1.0
    precision: str = "auto"
    max_batch_size: int = 32  # texts per batch a replica collects across requests
    batch_wait_ms: float = 5.0  # how long a replica waits to fill a batch while other requests are in it
    max_queued_requests: int = 256  # per model: beyond it, 503 with Retry-After
    token_file: str | None = None
    direct_ingress: bool = False  # replicas also listen on ports of their own (a Ray started here)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if not self.models:
            raise ValueError("serve: give at least one --model DIR or --model NAME=DIR")
        for name in self.models:
            if not name or not set(name) <= MODEL_NAME_CHARS:
                raise ValueError(
                    f"--model {name}=...: a model name may hold letters, digits, '_', '.' and '-'"
                )
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision}: must be one of {', '.join(PRECISIONS)}")
        for key in ("replicas", "max_batch_size", "max_queued_requests"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be at least 1")


def parse_models(specs: list[str]) -> dict[str, str]:
    """``NAME=DIR`` or a bare ``DIR`` (named after its folder) -> ``{name: location}``.

    Raises:
        ValueError: a name given twice.
    """
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, location = spec.partition("=")
        if not sep or "/" in name or ":" in name:
            location = spec
            name = location.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        if name in models:
            raise ValueError(f"--model {spec}: the name {name!r} is given twice; name them: --model NAME=DIR")
        models[name] = location
    return models


def read_token(path: str) -> str:
    """The bearer token in ``path`` (mode 0600 or stricter: nobody else may read it).

    Raises:
        ValueError: a missing, empty or group/other-readable file.
    """
    try:
        mode = os.stat(path).st_mode
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"--token-file {path}: mode {stat.S_IMODE(mode):04o} lets others read it; run chmod 600 {path}"
        )
    if not token:
        raise ValueError(f"--token-file {path}: the file is empty; put the token in it")
    return token


def token_digest(token: str) -> str:
    """What the replicas hold of the token: its sha256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ---- requests ----------------------------------------------------------------------------------------
class RequestError(Exception):
    """A request the server refuses: its HTTP status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_texts(body: bytes, limits: Limits) -> list[str]:
    """The texts of a predict request body, checked.

    Raises:
        RequestError: 400 for a body that is not ``{"texts": [str, ...]}`` (non-empty), 413 for
            more texts than ``limits.max_texts``.
    """
    try:
        payload = json.loads(body.decode("utf-8"))  # JSON over HTTP is UTF-8 (RFC 8259), no BOM guessing
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f'the body is not JSON ({exc}); send {{"texts": ["..."]}}') from None
    if not isinstance(payload, dict) or "texts" not in payload:
        raise RequestError(400, 'the body has no \'texts\'; send {"texts": ["..."]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(400, f'\'texts\' is a {_json_type(texts)}, not a list; send {{"texts": ["..."]}}')
    if not texts:
        raise RequestError(400, "'texts' is empty; send at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(
            413, f"{len(texts)} texts in one request, over the limit of {limits.max_texts}; split the request"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"texts[{i}] is a {_json_type(text)}, not a string")
    return texts


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (413), not read whole first."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes, over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
    return bytes(body)


def json_response(payload: dict, status: int = 200, headers: dict | None = None) -> Response:
    """UTF-8 JSON; a lone surrogate from the request (valid in JSON, not in UTF-8) goes back as
    a ``\\uXXXX`` escape."""
    try:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        body = json.dumps(payload).encode("ascii")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def bind_replica_grpc_to_node_address() -> None:
    """Ray Serve 2.60 starts each replica's inter-deployment gRPC server on ``[::]:0``, every
    interface of the machine, whatever the HTTP host (``ray/serve/_private/replica.py``,
    ``_on_initialized``). Call in a replica's constructor (it runs before that server starts):
    the server then binds to this node's Ray address instead, which the other nodes reach and
    the networks beyond the cluster's do not (127.0.0.1 on a local Ray)."""
    import ray
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "node_address_only", False):
        return
    node = ray.util.get_node_ip_address()

    def bind(server, address: str):
        if address.startswith("[::]:"):
            address = f"{node}:{address.rsplit(':', 1)[1]}" if ":" not in node else f"[{node}]:0"
        return original(server, address)

    bind.node_address_only = True
    replica.add_port_to_grpc_server = bind


# ---- the model replicas ------------------------------------------------------------------------------
def predict_route(name: str) -> str:
    """The path a model answers on; also the route prefix of its application."""
    return f"/v1/models/{name}:predict"


def model_app_name(name: str) -> str:
    return f"{APP_NAME}-{name}"


MODEL_DEPLOYMENT = "model"  # each model application's one deployment


@functools.cache
def _model_handle(name: str):
    """A handle to a model's replicas (its application need not be running yet)."""
    return serve.get_deployment_handle(MODEL_DEPLOYMENT, model_app_name(name), _check_exists=False)


def unauthorized(request: Request, token_sha256: str | None) -> Response | None:
    """401 for a request without the token (``None`` when it may pass)."""
    if authorized(request.headers.get("authorization", ""), token_sha256):
        return None
    return json_response(
        {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
        401,
        {"WWW-Authenticate": "Bearer"},
    )


@serve.deployment(ray_actor_options={"num_cpus": 1})
class ModelServer:
    """One model's replica, and the HTTP endpoint of its route (its application's route prefix,
    so a request reaches the replica that runs the model with no hop in between): checks the
    token and the body, labels the texts batched with other requests' (``@serve.batch``)."""

    def __init__(self, name: str, location: str, cfg: ServeConfig, token_sha256: str | None):
        from albert_ray.inference.labeler import Labeler
        from albert_ray.runtime.attach import configure_tf

        bind_replica_grpc_to_node_address()
        configure_tf(max(1, int(cfg.cpus_per_replica)))
        local = modeldir.local_copy(location)
        self.name, self.route, self.cfg, self.token_sha256 = name, predict_route(name), cfg, token_sha256
        self.checksum = modeldir.checksum({n: (local / n).read_bytes() for n in modeldir.REQUIRED})
        self.labeler = Labeler.from_dir(local, batch_size=cfg.max_batch_size, precision=cfg.precision)
        self._batched.set_max_batch_size(cfg.max_batch_size)  # the wait is set per request (predict)
        self.labeler.predict(["预热 warm-up"])  # traced and run once before the first request
        self.served = {"requests": 0, "texts": 0, "batches": 0, "windows": 0, "forward_passes": 0}
        self.labeler.windows_run = self.labeler.forward_passes = 0
        self.in_replica = 0  # requests being answered or waiting here
        self._metrics = _replica_metrics(name)

    async def __call__(self, request: Request) -> Response:
        if request.url.path.rstrip("/") != self.route:
            return json_response(
                {"error": f"no route {request.url.path}; this model answers {self.route}"}, 404
            )
        if request.method != "POST":
            return json_response(
                {"error": f"{request.method} {self.route}: use POST"}, 405, {"Allow": "POST"}
            )
        if refused := unauthorized(request, self.token_sha256):
            return refused
        if self.in_replica >= self.cfg.max_batch_size + self.cfg.max_queued_requests:
            return json_response(
                {"error": f"model {self.name!r} has too many requests queued; retry shortly"},
                503,
                {"Retry-After": str(self.cfg.limits.retry_after_s)},
            )
        self.in_replica += 1
        try:
            return await self._answer(request)
        finally:
            self.in_replica -= 1

    async def _answer(self, request: Request) -> Response:
        limits = self.cfg.limits
        try:
            texts = parse_texts(await read_body(request, limits.max_body_bytes), limits)
            results = await asyncio.wait_for(self.predict(texts), limits.request_timeout_s)
        except RequestError as exc:
            return json_response({"error": str(exc)}, exc.status)
        except TimeoutError:
            return json_response(
                {
                    "error": f"no answer within {limits.request_timeout_s:g} s; send fewer or shorter texts, or retry"
                },
                504,
            )
        return json_response({"results": results})

    async def predict(self, texts: list[str]) -> list[dict]:
        """One result per text: texts within ``max_chars`` labeled (batched with other requests'
        texts), the others an error in their place."""
        self.served["requests"] += 1
        limit, size = self.cfg.limits.max_chars, self.cfg.max_batch_size
        wanted = [text for text in texts if len(text) <= limit]
        # wait to fill a batch only when other requests are here to fill it: a lone one runs at once
        self._batched.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000 if self.in_replica > 1 else 0)
        parts = await asyncio.gather(  # a request longer than a batch goes in several
            *(self._batched(wanted[i : i + size]) for i in range(0, len(wanted), size))
        )
        labeled = iter(result for part in parts for result in part)
        return [
            {"text": text, **next(labeled)}
            if len(text) <= limit
            else {
                "text": text,
                "error": f"the text has {len(text)} characters, over max_chars {limit}; split it",
            }
            for text in texts
        ]

    @serve.batch(
        max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=lambda items: sum(map(len, items))
    )
    async def _batched(self, requests: list[list[str]]) -> list[list[dict]]:
        texts = [text for request in requests for text in request]
        windows, passes = self.labeler.windows_run, self.labeler.forward_passes
        results = await asyncio.to_thread(self.labeler.predict, texts)
        self._count(len(texts), self.labeler.windows_run - windows, self.labeler.forward_passes - passes)
        out, k = [], 0
        for request in requests:
            out.append(results[k : k + len(request)])
            k += len(request)
        return out

    def _count(self, texts: int, windows: int, passes: int) -> None:
        self.served["texts"] += texts
        self.served["batches"] += 1
        self.served["windows"] += windows
        self.served["forward_passes"] += passes
        for metric, value in zip(self._metrics, (texts, windows, passes)):
            metric.inc(value)

    def describe(self) -> dict:
        """What ``GET /v1/models`` shows of this model, and what this replica has served."""
        spec = self.labeler.spec
        encoder = spec.encoder
        return {
            "name": self.name,
            "route": f"POST {self.route}",
            "task": spec.task,
            "labels": list(spec.labels),
            "precision": self.labeler.precision,
            "checksum": self.checksum,
            "max_len": spec.max_len,
            "encoder": {
                "layout": encoder.layout,
                "hidden_size": encoder.hidden_size,
                "num_hidden_layers": encoder.num_hidden_layers,
                "vocab_size": encoder.vocab_size,
            },
            "served_by_this_replica": dict(self.served),
            "direct_url": _direct_url(self.route),
        }


DIRECT_INGRESS_ENV = {  # Ray Serve 2.60 reads these when its controller and replicas start
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",  # a stopping replica holds its port 2 s, not 30
}


def _direct_url(route: str) -> str | None:
    """This replica's own HTTP address under direct ingress (read from /proc: Ray Serve does not
    tell its replicas their port), or ``None``."""
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        return None
    from ray.serve._private.constants import (
        RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT as high,
    )
    from ray.serve._private.constants import (
        RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT as low,
    )

    from albert_ray.runtime.localcluster import listening_sockets

    found = [(host, port) for _, host, port in listening_sockets([os.getpid()]) if low <= port < high]
    if not found:
        return None
    host, port = found[0]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{route}"


def _replica_metrics(name: str) -> tuple:
    """Counters beside Ray Serve's own request count and latency, tagged with the model."""
    from ray.serve import metrics

    made = []
    for metric, description in (
        ("albert_ray_texts_served", "texts labeled"),
        ("albert_ray_windows_served", "windows run through the model"),
        ("albert_ray_forward_passes", "batched forward passes"),
    ):
        counter = metrics.Counter(metric, description=description, tag_keys=("model",))
        counter.set_default_tags({"model": name})
        made.append(counter)
    return tuple(made)


def authorized(header: str, token_sha256: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token (always, when there is none)."""
    if token_sha256 is None:
        return True
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return bool(token) and hmac.compare_digest(token_digest(token), token_sha256)


async def not_ready(models: dict, timeout_s: float = 2.0) -> list[str]:
    """The models whose replicas do not answer within ``timeout_s`` (loading, restarting, failed,
    not deployed yet). ``models``: ``{name: a function returning its deployment handle}``."""

    async def ready(handle) -> bool:
        try:
            await asyncio.wait_for(handle().describe.remote(), timeout=timeout_s)
            return True
        except Exception:  # not ready, whatever the reason
            return False

    answers = await asyncio.gather(*(ready(handle) for handle in models.values()))
    return [name for name, ok in zip(models, answers) if not ok]


# ---- the index: readiness and the model list -------------------------------------------------------------
api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no pages beyond the routes below


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class Index:
    """Every route but the models' own: ``/healthz``, ``/v1/models``, ``/v1/models/<name>``, and
    the predict route of a model that is not there (or not deployed yet)."""

    def __init__(self, names: list[str], token_sha256: str | None):
        bind_replica_grpc_to_node_address()
        self.models = {name: functools.partial(_model_handle, name) for name in names}
        self.token_sha256 = token_sha256

    def _missing(self, name: str) -> Response:
        if name in self.models:  # its application is starting, or failed to
            return json_response(
                {"error": f"model {name!r} is not serving yet; retry shortly"}, 503, {"Retry-After": "1"}
            )
        return json_response({"error": f"no model named {name!r}; models: {', '.join(self.models)}"}, 404)

    @api.get("/healthz")
    async def healthz(self) -> Response:
        waiting = await not_ready(self.models)
        if waiting:
            return json_response({"status": "loading", "waiting_for": waiting}, 503, {"Retry-After": "1"})
        return json_response({"status": "ok", "models": list(self.models)})

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        if refused := unauthorized(request, self.token_sha256):
            return refused
        described = await asyncio.gather(*(handle().describe.remote() for handle in self.models.values()))
        return json_response({"models": list(described)})

    @api.get("/v1/models/{name}")
    async def one_model(self, name: str, request: Request) -> Response:
        if refused := unauthorized(request, self.token_sha256):
            return refused
        if name not in self.models:
            return self._missing(name)
        return json_response(await self.models[name]().describe.remote())

    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> Response:
        return unauthorized(request, self.token_sha256) or self._missing(name)


# ---- the applications -----------------------------------------------------------------------------------
def model_app(name: str, location: str, cfg: ServeConfig, token_sha256: str | None = None):
    """One model's application (route prefix :func:`predict_route`): its replicas."""
    capacity = cfg.max_batch_size + cfg.max_queued_requests  # the replica answers 503 beyond it
    return ModelServer.options(
        name=MODEL_DEPLOYMENT,
        num_replicas=cfg.replicas,
        max_ongoing_requests=capacity + 32,  # a little more, so that the 503 is the replica's own
        ray_actor_options={"num_cpus": cfg.cpus_per_replica},
    ).bind(name, _located(location), cfg, token_sha256)


def index_app(names: list[str], token_sha256: str | None = None):
    """The application at ``/``: readiness and the model list."""
    return Index.options(name="index").bind(list(names), token_sha256)


def applications(cfg: ServeConfig, token_sha256: str | None = None) -> list:
    """Every application of a server, as ``serve.run_many`` takes them: one per model, and the index."""
    from ray.serve.api import RunTarget

    quiet = _serve_logging()
    targets = [
        RunTarget(
            model_app(name, location, cfg, token_sha256),
            name=model_app_name(name),
            route_prefix=predict_route(name),
            logging_config=quiet,
        )
        for name, location in cfg.models.items()
    ]
    index = RunTarget(
        index_app(list(cfg.models), token_sha256), name=APP_NAME, route_prefix="/", logging_config=quiet
    )
    return [*targets, index]


def _located(location: str) -> str:
    """A local model directory as an absolute path (replicas do not share the driver's cwd)."""
    return location if paths.is_uri(location) else str(Path(location).resolve())


def model_app_builder(args: dict):
    """For ``serve run`` / ``serve deploy`` (``import_path:
    albert_ray.inference.serve:model_app_builder``), one per model: ``args`` holds ``name``,
    ``model`` (a directory or URI) and any other :class:`ServeConfig` field; ``limits`` as a
    mapping; ``token_file`` read where the application is built."""
    args = dict(args)
    name, location = args.pop("name"), args.pop("model")
    limits = Limits(**args.pop("limits", {}))
    args.pop("host", None), args.pop("port", None)  # the config file's http_options own these
    cfg = ServeConfig(models={name: location}, limits=limits, **args)
    modeldir.check(location)
    return model_app(name, location, cfg, _digest(cfg.token_file))


def index_app_builder(args: dict):
    """For ``serve run`` / ``serve deploy`` (``import_path:
    albert_ray.inference.serve:index_app_builder``, ``route_prefix: /``): ``args`` holds
    ``models`` (their names) and ``token_file`` if the models have one."""
    return index_app(list(args["models"]), _digest(args.get("token_file")))


def _digest(token_file: str | None) -> str | None:
    return token_digest(read_token(token_file)) if token_file else None


def _serve_logging() -> dict:
    from albert_ray.runtime.quiet import verbose

    return {"log_level": "DEBUG" if verbose() else "WARNING"}  # Serve's access log only with -v


# ---- albert-ray serve ------------------------------------------------------------------------------------
def serve_models(cfg: ServeConfig, address: str | None = None, block: bool = True) -> list[dict]:
    """Check every model, start Ray Serve on ``cfg.host:cfg.port``, deploy (or redeploy: the same
    application name updates in place) and, with ``block``, serve until Ctrl-C. Returns what
    ``GET /v1/models`` shows.

    Raises:
        ModelDirError: a model directory that fails the check, before Ray starts (one line).
        ValueError: a bad token file, or a local model directory a node cannot see.
    """
    from albert_ray.runtime.attach import init_ray, require_visible

    for location in cfg.models.values():
        modeldir.check(location)
    digest = _digest(cfg.token_file)
    if not address and not os.environ.get("RAY_ADDRESS"):
        require_free_port(cfg.host, cfg.port)
    if cfg.direct_ingress:
        if address or os.environ.get("RAY_ADDRESS"):
            raise ValueError(
                "--direct-ingress: Ray Serve reads it where the cluster starts; set "
                "RAY_SERVE_ENABLE_DIRECT_INGRESS=1 in its nodes' environment instead (docs/serving.md)"
            )
        os.environ.update(DIRECT_INGRESS_ENV)  # the local Ray started next inherits them
    init_ray(address)
    require_visible(
        "--model",
        "serving replicas load it",
        [
            (str(Path(location, name)), Path(location, name).stat().st_size)
            for location in cfg.models.values()
            if not paths.is_uri(location)
            for name in modeldir.REQUIRED
        ],
    )
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": cfg.host, "port": cfg.port},
        logging_config=_serve_logging(),
    )
    _delete_other_models(cfg)
    try:
        serve.run_many(applications(cfg, digest))
    except RuntimeError as exc:  # a replica's constructor failed: Serve's text holds the traceback
        raise RuntimeError(f"serve: the application did not start: {_last_error_line(exc)}") from None
    described = [_model_handle(name).describe.remote().result(timeout_s=60) for name in cfg.models]
    print(usage(cfg, described))
    if block:
        _wait_for_ctrl_c()
    return described


def _delete_other_models(cfg: ServeConfig) -> None:
    """A redeploy without a model that the server had: its application goes."""
    running = serve.status().applications
    for app in running:
        if app.startswith(f"{APP_NAME}-") and app not in {model_app_name(n) for n in cfg.models}:
            serve.delete(app)


def require_free_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, before Ray starts (Ray Serve's proxy would fail
    to start with it, deep in its log).

    Raises:
        ValueError: one line naming the address and the fix.
    """
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pick another --port"
            ) from None


def _last_error_line(exc: BaseException) -> str:
    """The last line of an error's text that names an exception (Serve wraps the replica's)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line or "Exception:" in line]
    return (named or lines or [type(exc).__name__])[-1]


def usage(cfg: ServeConfig, described: list[dict]) -> str:
    """What ``albert-ray serve`` prints: the URL, each model, and how to call it with curl."""
    url = f"http://{cfg.host}:{cfg.port}"
    lines = [
        f"serving {len(described)} model(s) at {url} with Ray Serve "
        f"({cfg.replicas} replica(s) each; Ctrl-C stops)"
    ]
    for d in described:
        lines.append(
            f"  {d['name']}: {d['task']}, {len(d['labels'])} labels, {d['precision']}, model {d['checksum']} "
            f"({paths.without_credentials(cfg.models[d['name']])})"
        )
        if d.get("direct_url"):
            each = " (one replica's: each has a port of its own)" if cfg.replicas > 1 else ""
            lines.append(f"    direct ingress: POST {d['direct_url']}{each}")
    auth = f' -H "Authorization: Bearer $(cat {cfg.token_file})"' if cfg.token_file else ""
    name = described[0]["name"]
    lines += [
        "call it:",
        f"  curl -s {url}/v1/models/{name}:predict{auth} -H 'Content-Type: application/json' "
        '-d \'{"texts": ["新华社北京电，李明在清华大学发表演讲。"]}\'',
        f"  curl -s {url}/v1/models{auth}        (models, labels, what each replica served)",
        f"  curl -s {url}/healthz           (200 once every model is loaded)",
    ]
    return "\n".join(lines)


def _wait_for_ctrl_c() -> None:
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: Ray Serve shuts down")
        serve.shutdown()
