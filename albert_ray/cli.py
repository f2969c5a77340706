"""The ``albert-ray`` command: parse the arguments, then one library call per subcommand; a
mistake is one line on stderr (exit 2), a fault of the environment one line (exit 1)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import albert_ray  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from albert_ray import modeldir
from albert_ray.errors import ONE_LINE, USER_ERRORS, first_line, unwrapped
from albert_ray.finetune.config import JobConfig, load_job_config
from albert_ray.finetune.driver import train, train_in_process
from albert_ray.label.config import LabelConfig, load_label_config
from albert_ray.label.run import label_corpus
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.memory_planner import estimate, format_plan, parse_size, recommend
from albert_ray.model.params import format_table, params_table
from albert_ray.pretrain.config import PretrainConfig, load_pretrain_config
from albert_ray.pretrain.driver import pretrain
from albert_ray.runtime.attach import import_tensorflow
from albert_ray.runtime.localcluster import LocalCluster, start_local_cluster
from albert_ray.runtime.quiet import VERBOSE_ENV, set_verbose
from albert_ray.tasks.registry import task_for

DEFAULT_CONFIGS = os.environ.get("ALBERT_RAY_CONFIGS", str(Path("..") / "shared" / "corpora" / "albert_zh"))


def setup_logging(verbose: bool = False) -> None:
    verbose = verbose or os.environ.get(VERBOSE_ENV) == "1"  # jobs/*.py: ALBERT_RAY_VERBOSE=1
    set_verbose(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _cmd_params(args) -> int:
    rows = params_table(args.configs, num_classes=args.classes, seq_len=args.seq_len)
    print(format_table(rows))
    return 0


def split_inputs(
    inputs: list[str] | None, overrides: list[str], fields: set[str]
) -> tuple[list[str] | None, list[str]]:
    """``--input a b key=value`` (and ``--predict``): argparse's greedy list also collects the
    overrides after it; an item whose key (before ``=``, up to its first dot) is a config field is one."""

    def is_override(item: str) -> bool:
        return "=" in item and item.split("=", 1)[0].split(".", 1)[0] in fields

    if inputs is None:
        return None, list(overrides)
    return [x for x in inputs if not is_override(x)], list(overrides) + [x for x in inputs if is_override(x)]


def _cmd_train(args) -> int:
    texts, overrides = split_inputs(
        args.predict, args.overrides, {f.name for f in dataclasses.fields(JobConfig)}
    )
    job = load_job_config(args.config, overrides)
    import_tensorflow()
    summary = (train_in_process if args.no_ray else train)(job)
    print(summary["report_text"])
    print(
        f"model saved to {summary['model_dir']} ({summary['seconds']} s); "
        f"best dev score {summary['best_dev_score']:.4f}"
    )
    if texts:
        _print_predictions(job.model_dir, texts)
    return 0


def _cmd_evaluate(args) -> int:
    modeldir.check(args.model)  # before TensorFlow loads: a bad directory is one line
    import_tensorflow()
    from albert_ray.inference.evaluate import evaluate_file

    text, _ = evaluate_file(
        args.model, args.data, fmt=args.format, on_bad_records=args.on_bad_records, output=args.output
    )
    print(text)
    return 0


def _cmd_export(args) -> int:
    modeldir.check(args.model)  # before TensorFlow loads: a bad directory is one line
    import_tensorflow()
    from albert_ray.inference.export import export

    out = export(args.model, args.output)
    print(f"SavedModel written to {out}: serving_default(texts: string[batch]) -> see {out / 'export.json'}")
    return 0


def _print_predictions(
    model_dir, texts: list[str], lines: list[int] | None = None, problems: dict[int, str] | None = None
) -> None:
    """One JSON line per text, in order. With ``lines`` (``--file``), each carries its line
    number; a blank line gives an empty result and a line that could not be read its
    ``error``, so output line k always belongs to input line k."""
    modeldir.check(model_dir)  # before TensorFlow loads: a bad directory is one line
    import_tensorflow()
    from albert_ray.inference.labeler import Labeler

    problems = problems or {}
    labeler = Labeler.from_dir(model_dir)
    wanted = [i for i, text in enumerate(texts) if text.strip() and i not in problems]
    results = dict(zip(wanted, labeler.predict([texts[i] for i in wanted])))
    for i, text in enumerate(texts):
        record = {"line": lines[i]} if lines else {}
        if i in problems:
            record.update(text=None, error=problems[i])
        else:
            record.update(text=text, **results.get(i, {}))
        # a lone surrogate (argv bytes that were not UTF-8) cannot be written as UTF-8: \\uXXXX
        print(json.dumps(record, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8"))


def read_text_lines(path: str) -> tuple[list[str], dict[int, str]]:
    """The lines of a UTF-8 file (BOM, CRLF handled) and the problems of the unreadable ones
    (invalid UTF-8 with the byte and column, NUL), by index; every line is kept."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    texts, problems = [], {}
    for i, raw in enumerate(data.split(b"\n")[: -1 if data.endswith(b"\n") else None]):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            text, problems[i] = "", f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        if "\x00" in text:
            problems[i] = f"NUL character at column {text.index(chr(0)) + 1}"
        texts.append(text)
    return texts, problems


def _cmd_predict(args) -> int:
    if args.file and args.texts:
        raise ValueError("give texts as arguments or --file, not both")
    if args.file:
        texts, problems = read_text_lines(args.file)
        for i, problem in problems.items():
            print(
                f"albert-ray predict: {args.file}:{i + 1}: {problem}; its output line holds the error",
                file=sys.stderr,
            )
        _print_predictions(args.model, texts, lines=list(range(1, len(texts) + 1)), problems=problems)
        return 0
    if not args.texts:
        raise ValueError("nothing to predict: give texts as arguments or --file")
    _print_predictions(args.model, list(args.texts))
    return 0


def _cmd_label(args) -> int:
    fields = {f.name for f in dataclasses.fields(LabelConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    inputs, overrides = split_inputs(given.pop("inputs", None), args.overrides, fields)
    cfg = load_label_config(args.config, overrides, given if inputs is None else {**given, "inputs": inputs})
    m = label_corpus(cfg, address=args.address)

    counts = m[task_for(m["task"]).counts_key]
    print(
        f"rows in {m['rows_in']} = out {m['rows_out']} + quarantined {m['rows_quarantined']} "
        f"({m['quarantine_reasons']}); units {m['units']} ({m['units_reused']} reused); "
        f"{m['rows_per_second']} rows/s ({', '.join(m['precision']) or '-'}); output {m['output']}"
    )
    print(f"counts: {dict(list(counts.items())[:20])}")
    return 0


def _cmd_serve(args) -> int:
    from albert_ray.inference.serve import Limits, ServeConfig, parse_models, serve_models

    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        request_timeout_s=args.request_timeout,
    )
    cfg = ServeConfig(
        models=parse_models(args.model),
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        precision=args.precision,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queued_requests=args.max_queued_requests,
        token_file=args.token_file,
        direct_ingress=args.direct_ingress,
        limits=limits,
    )
    serve_models(cfg, address=args.address)
    return 0


def _cmd_pretrain(args) -> int:
    inputs, overrides = split_inputs(
        args.inputs, args.overrides, {f.name for f in dataclasses.fields(PretrainConfig)}
    )
    cfg = load_pretrain_config(args.config, overrides, inputs)
    import_tensorflow()
    summary = pretrain(cfg, in_process=args.no_ray)
    last = summary["history"][-1]
    print(
        f"pre-trained encoder in {summary['pretrained_dir']} ({summary['seconds']} s, {last['steps']} steps): "
        f"held-out MLM loss {last['heldout_loss']:.4f}, masked-token accuracy {last['heldout_accuracy']:.4f}"
    )
    print(f"fine-tune from it: model.init=checkpoint model.checkpoint={summary['pretrained_dir']}")
    return 0


def _cmd_cluster(args) -> int:
    state = Path(args.state_dir) / "cluster.json"
    if args.action == "start":
        if state.exists():
            raise ValueError(
                f"{state} exists: a cluster was started from here; run 'albert-ray cluster stop' first"
            )
        c = start_local_cluster(num_cpus=args.num_cpus, state_dir=args.state_dir)
        print(f"Ray head at {c.address}; dashboard and job server at {c.dashboard_url} (127.0.0.1 only)")
        print("Clients need token authentication; in your shell:")
        for k, v in c.client_env().items():
            print(f"  export {k}={v}")
        print(
            "then e.g.: ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- "
            "python jobs/train.py --config jobs/configs/sample_ner.yaml"
        )
        return 0
    if not state.exists():
        raise FileNotFoundError(f"no cluster state at {state}; start one with 'albert-ray cluster start'")
    c = LocalCluster.load(state)
    if args.action == "stop":
        c.stop()
        state.unlink()
        print(f"stopped the cluster at {c.address} ({len(c.pids)} processes)")
    else:
        print(json.dumps(c.__dict__, indent=2))
    return 0


def _cmd_plan(args) -> int:
    config = EncoderConfig.from_json_file(args.model)
    plan = recommend(
        config, parse_size(args.gpu_mem), args.seq_len, args.global_batch, args.gpus, args.mixed_precision
    )
    print(
        f"{config.source}: seq_len {args.seq_len}, {args.gpus} GPU(s) of {args.gpu_mem}, target global batch "
        f"{args.global_batch}{', mixed_float16' if args.mixed_precision else ''}"
    )
    print(format_plan(config, estimate(config, args.seq_len, args.mixed_precision), plan))
    print(
        f"job config: train.batch_size={plan.per_gpu_batch} train.grad_accum_steps={plan.accumulation_steps} "
        f"train.num_workers={args.gpus} train.use_gpu=true"
        + (" train.mixed_precision=true" if args.mixed_precision else "")
    )
    return 0


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


LABEL_HELP = {
    "model": "model directory written by train",
    "inputs": "files, directories or globs (local or s3:// gs:// hdfs://)",
    "output": "output folder (local or URI); re-running resumes",
    "format": "text | jsonl | csv | parquet | auto (by extension)",
    "text_field": "JSONL/CSV/Parquet text column",
    "id_field": "column to keep as the row id",
    "include_text": "copy the text into the output",
    "include_probs": "all class probabilities (classify, multilabel)",
    "max_chars": "longer texts are quarantined",
    "unit_bytes": "plain text / JSONL unit size, the resume granularity (e.g. 32MiB)",
    "batch_size": "rows per labeling call",
    "model_batch_size": "windows per forward pass",
    "concurrency": "labeling actors (0: one per GPU, else up to 4 sharing the CPUs)",
    "num_cpus": "CPUs per actor, fractional",
    "num_gpus": "GPUs per actor",
    "tf_threads": "TensorFlow threads per actor (0: CPUs / actors)",
    "precision": "auto | float32 | bfloat16 | float16",
    "prune": "delete labels of inputs no longer given",
    "verify": "checksum every committed part before reusing its unit (sizes are always checked)",
    "progress": "no progress bar / progress lines",
}


def _label_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ``LabelConfig`` field (dashes for underscores), defaults from the dataclass.
    Unset flags stay ``None`` so a label config file's values are not overwritten."""

    for f in dataclasses.fields(LabelConfig):
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default})"
        text = LABEL_HELP[f.name]
        if f.name == "inputs":
            p.add_argument("--input", dest="inputs", nargs="+", help=text)
        elif f.name == "progress":
            p.add_argument("--no-progress", dest="progress", action="store_const", const=False, help=text)
        elif f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_const", const=True, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            kind = _size if f.name == "unit_bytes" else kind
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=text + default)


DESCRIPTION = """Chinese ALBERT with keras-bert on TensorFlow, distributed with Ray: fine-tune (Ray Train),
label corpora into Parquet (Ray Data), serve over HTTP (Ray Serve), pre-train. A local Ray on
127.0.0.1 starts by itself; inside `ray job submit` the job's cluster is used.

start here: bash scripts/demo.sh   (docs: docs/cli.md, one page per task in docs/)"""

# One example per subcommand, shown at the end of its --help (docs/cli.md lists every option)
EXAMPLES = {
    "params": "albert-ray params --configs ../shared/corpora/albert_zh",
    "train": "albert-ray train --config jobs/configs/sample_ner.yaml train.epochs=2 --predict '张伟到北京出差'",
    "pretrain": "albert-ray pretrain --config jobs/configs/pretrain/sample.yaml train.max_minutes=5",
    "evaluate": "albert-ray evaluate --model runs/sample_ner/model --data data/ner_sample.test.bio --output runs/eval",
    "predict": "albert-ray predict --model runs/sample_ner/model '张伟昨天在北京会见了新华社代表团。'",
    "export": "albert-ray export --model runs/sample_ner/model --output runs/sample_ner/saved_model",
    "label": "albert-ray label --model runs/sample_ner/model --input data/demo_corpus --output runs/labels",
    "serve": "albert-ray serve --model ner=runs/sample_ner/model --port 8000",
    "plan": "albert-ray plan --model ../shared/corpora/albert_zh/albert_config_xlarge.json --gpu-mem 16GiB --gpus 4",
    "cluster": "albert-ray cluster start --num-cpus 2",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albert-ray", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything: TensorFlow's C++ logs, Ray's internal messages, Ray Data's bars",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _training_commands(sub)
    _model_commands(sub)
    _serve_command(sub)
    _cluster_commands(sub)
    for name, command in sub.choices.items():
        command.epilog = f"example:\n  {EXAMPLES[name]}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _training_commands(sub) -> None:
    """params, train, pretrain."""
    p = sub.add_parser("params", help="parameter counts of every encoder config in a folder")
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="folder of albert_config*.json / bert_config.json (default: %(default)s or $ALBERT_RAY_CONFIGS)",
    )
    p.add_argument("--classes", type=int, default=5, help="classes of the [CLS] softmax head (default: 5)")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length (default: 512)")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("train", help="fine-tune a model from a YAML job config")
    p.add_argument("--config", required=True, help="job config YAML (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2 model.max_len=64")
    p.add_argument("--no-ray", action="store_true", help="run the worker loop in this process, without Ray")
    p.add_argument(
        "--predict", nargs="*", default=[], help="texts to label with the trained model afterwards"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "pretrain", help="masked-LM pre-training / domain adaptation of an encoder on raw text"
    )
    p.add_argument("--config", help="pretrain config YAML (see jobs/configs/pretrain/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.max_minutes=10 model.max_len=64"
    )
    p.add_argument(
        "--input", dest="inputs", nargs="+", help="text files, folders, globs or URIs (replace inputs)"
    )
    p.add_argument("--no-ray", action="store_true", help="run the loop in this process, without Ray")
    p.set_defaults(func=_cmd_pretrain)


def _model_commands(sub) -> None:
    """What a trained model directory is used for: evaluate, predict, export, label."""
    p = sub.add_parser("evaluate", help="evaluate a model directory on labelled data")
    p.add_argument("--model", required=True, help="model directory written by train")
    p.add_argument("--data", required=True, help="labelled file in any supported format")
    p.add_argument("--format", default="auto", help="csv | bio | cluener | jsonl | auto (default)")
    p.add_argument("--on-bad-records", default="error", help="error (default) | skip")
    p.add_argument("--output", help="folder for report.txt and metrics.json")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="label texts with a model directory (one JSON line per text)")
    p.add_argument("--model", required=True, help="model directory written by train")
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "export", help="write a TensorFlow SavedModel that serves raw texts (plain TensorFlow to load)"
    )
    p.add_argument("--model", required=True, help="model directory written by train")
    p.add_argument("--output", required=True, help="folder for the SavedModel")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("label", help="label a corpus with Ray Data, writing Parquet")
    p.add_argument("--config", help="label config YAML (any LabelConfig field; flags and overrides win)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. batch_size=1024 precision=float32")
    _label_flags(p)
    p.add_argument("--address", help="Ray address (default: the job's cluster, else a local Ray)")
    p.set_defaults(func=_cmd_label)


def _serve_command(sub) -> None:
    """serve: models behind HTTP with Ray Serve."""
    p = sub.add_parser(
        "serve",
        help="serve model directories over HTTP with Ray Serve (batched across requests)",
        description='Serve models over HTTP with Ray Serve: POST /v1/models/NAME:predict {"texts": [...]}, '
        "GET /v1/models, GET /healthz. Example: albert-ray serve --model ner=out/sample_ner/model",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a model directory or URI, named NAME (default: its folder's name); repeat for several",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="replicas of each model (default: %(default)s)")
    p.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="CPUs each replica holds (default: %(default)s)"
    )
    p.add_argument("--precision", default="auto", help="auto (default) | float32 | bfloat16 | float16")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="texts a replica runs together, collected across requests (default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a replica waits to fill a batch while other requests are in it; a lone "
        "request never waits (default: %(default)s)",
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=256,
        help="requests waiting per replica; beyond: 503 with Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--max-texts", type=int, default=256, help="texts in one request; more: 413 (default: %(default)s)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="request body size; larger: 413 (default: %(default)s)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=10_000,
        help="characters of one text; longer: an error in its place (default: %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds per request; later: 504 (default: %(default)s)",
    )
    p.add_argument(
        "--token-file", help="a file (mode 600) holding a bearer token every route but /healthz requires"
    )
    p.add_argument(
        "--direct-ingress",
        action="store_true",
        help="each model replica also answers on a port of its own (Ray Serve's direct ingress, "
        "printed at start), skipping the proxy; a Ray this command starts only",
    )
    p.add_argument("--address", help="Ray address (default: the job's cluster, else a local Ray)")
    p.set_defaults(func=_cmd_serve)


def _cluster_commands(sub) -> None:
    """plan (GPU memory) and cluster (a local Ray head)."""
    p = sub.add_parser("plan", help="estimate per-GPU memory and recommend batch / accumulation")
    p.add_argument("--model", required=True, help="encoder config JSON, e.g. albert_config_xlarge.json")
    p.add_argument("--gpu-mem", required=True, help="memory per GPU, e.g. 16GiB")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--global-batch", type=int, default=32, help="target global batch (default 32)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (workers)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("cluster", help="start / stop a single-node Ray cluster on 127.0.0.1 (token auth on)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--num-cpus", type=int, help="CPUs the node offers (default: all)")
    p.add_argument("--state-dir", default=".ray-local", help="where the cluster's state and token live")
    p.set_defaults(func=_cmd_cluster)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except ONE_LINE as exc:  # one clear line, no TensorFlow or Ray traceback
        print(f"albert-ray {args.command}: error: {first_line(unwrapped(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, USER_ERRORS) else 1
    except KeyboardInterrupt as exc:
        from albert_ray.runtime.attach import Interrupted

        text = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"albert-ray {args.command}: {text}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
