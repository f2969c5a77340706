"""An object-store ``storage_path``: Ray Train checkpoints go to an S3-compatible server (moto,
started here on 127.0.0.1 and stopped by its PID), and re-running the job resumes from them."""

import json
import re
from pathlib import Path

import pytest
from s3server import moto

from albert_ray.finetune.config import load_job_config
from albert_ray.finetune.driver import train

BUCKET = "albert-ray"
SECRET = "Zq9-s3cr3t"  # moto takes any key; not a word a vocabulary holds (the brightmart one has "secret")
CREDENTIALS = f"key:{SECRET}@"


@pytest.fixture
def s3_endpoint(tmp_path):
    with moto(tmp_path / "moto.log") as endpoint:
        yield endpoint


@pytest.mark.slow
@pytest.mark.ci
def test_checkpoints_in_an_object_store_and_resume_from_it(tmp_path, local_ray, s3_endpoint):
    import pyarrow.fs as pafs

    # the endpoint and credentials travel in the URI, so the driver, the Train controller and the
    # workers all reach the same store (moto takes any key)
    uri = f"s3://{CREDENTIALS}{BUCKET}/runs?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    base = [
        f"output_dir={tmp_path}",
        f"storage_path={uri}",
        "data.max_train_examples=128",
        "train.log_every=0",
        "train.patience=5",
        "train.keep_checkpoints=1",
    ]

    first = train(load_job_config("jobs/configs/sample_ner.yaml", [*base, "train.epochs=1"]))
    assert first["steps"] == 4 and first["resumes"] == []  # 128 rows / batch 32
    second = train(load_job_config("jobs/configs/sample_ner.yaml", [*base, "train.epochs=2"]))
    assert [r["epoch"] for r in second["resumes"]] == [1] and second["resumes"][0]["step"] == 4
    assert second["steps"] == 8 and len(second["history"]) == 2

    files = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/sample_ner", recursive=True))]
    # <bucket>/runs/sample_ner/checkpoint_<timestamp>/<file>; timestamps sort chronologically
    checkpoints = sorted(
        {p.split("/")[3] for p in files if p.count("/") == 4 and p.split("/")[3].startswith("checkpoint_")}
    )
    assert checkpoints, files
    for name in checkpoints:  # every kept checkpoint is a complete model directory + resume state
        inside = {p.rsplit("/", 1)[1] for p in files if p.startswith(f"{BUCKET}/runs/sample_ner/{name}/")}
        assert inside >= {"model.weights.h5", "model.json", "vocab.txt", "train_state.json", "optimizer.npz"}
    # keep_checkpoints=1 keeps the best by dev score, plus the latest (Ray never deletes that one)
    assert len(checkpoints) <= 2
    with fs.open_input_stream(f"{BUCKET}/runs/sample_ner/{checkpoints[-1]}/train_state.json") as f:
        assert json.loads(f.read())["epoch"] == 2
    # the secret in the URI reaches no file the run wrote: not the model directory, not a checkpoint
    written = [p for p in (tmp_path / "sample_ner").rglob("*") if p.is_file()]
    assert len(written) > 5 and [p for p in written if SECRET.encode() in p.read_bytes()] == []
    for path in (p for p in files if p.endswith((".json", ".txt", ".html"))):
        with fs.open_input_stream(path) as f:
            assert SECRET.encode() not in f.read(), path
    assert json.loads((tmp_path / "sample_ner" / "model" / "job.json").read_text())[
        "storage_path"
    ] == uri.replace(CREDENTIALS, "")


@pytest.mark.slow
@pytest.mark.ci
def test_fine_tuning_reads_its_data_files_from_an_object_store(tmp_path, local_ray, s3_endpoint):
    """``data.train`` / ``dev`` / ``test`` at URIs: read in the Ray task that prepares the data
    (each node copies a file into its own cache); a missing one is one line before Ray starts, a bad
    record names the URI and its line, and the secret reaches neither."""
    import pyarrow.fs as pafs

    from albert_ray.errors import first_line, unwrapped
    from albert_ray.io.training_files import DataError

    uri = f"s3://{CREDENTIALS}{BUCKET}/data?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    for split in ("train", "dev", "test"):
        with fs.open_output_stream(f"{BUCKET}/data/ner.{split}.bio") as f:
            f.write(Path(f"data/ner_sample.{split}.bio").read_bytes())
    with fs.open_output_stream(f"{BUCKET}/data/bad.bio") as f:
        f.write("张 B-PER\n伟 I-PER\n在 O O\n".encode())
    at = {split: uri.replace("/data?", f"/data/ner.{split}.bio?") for split in ("train", "dev", "test")}
    base = [f"output_dir={tmp_path}", "train.epochs=1", "data.max_train_examples=64", "train.log_every=0"]
    base += [f"data.{split}={location}" for split, location in at.items()]

    summary = train(load_job_config("jobs/configs/sample_ner.yaml", base))
    assert (summary["train_examples"], summary["eval_split"], summary["eval_examples"]) == (64, "test", 100)
    assert SECRET not in json.dumps({k: v for k, v in summary.items() if k != "report_text"})

    missing = at["dev"].replace("ner.dev.bio", "nope.bio")
    with pytest.raises(FileNotFoundError) as err:
        train(load_job_config("jobs/configs/sample_ner.yaml", [*base, f"data.dev={missing}"]))
    assert str(err.value) == f"data.dev not found: s3://{BUCKET}/data/nope.bio"
    bad = at["train"].replace("ner.train.bio", "bad.bio")
    with pytest.raises(Exception) as err:
        train(load_job_config("jobs/configs/sample_ner.yaml", [*base, f"data.train={bad}"]))
    line = first_line(unwrapped(err.value))
    assert isinstance(unwrapped(err.value), DataError) and line == (
        f"s3://{BUCKET}/data/bad.bio:3: "
        "expected 'char tag', got 3 fields: '在 O O' (set on_bad_records: skip to skip and count such records)"
    )


@pytest.mark.slow
@pytest.mark.ci
def test_labeling_reads_an_object_store_by_the_inputs_endpoint_and_names_an_unreadable_object(
    tmp_path, local_ray, s3_endpoint, small_ner_model
):
    """The endpoint and credentials in an input URI reach the read tasks (a file opened as
    ``s3://bucket/key`` alone would be looked for on AWS), are kept out of the output, and an
    object the store refuses to serve is one line naming it."""
    import boto3
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from albert_ray.errors import InputUnreadable, first_line, unwrapped
    from albert_ray.label.config import LabelConfig
    from albert_ray.label.run import label_corpus

    model = small_ner_model
    uri = f"s3://{CREDENTIALS}{BUCKET}/in?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    for name, text in (
        ("a.txt", "张伟在北京。\n王芳去上海。\n"),
        ("b.jsonl", '{"text": "李明"}\n{"text": "新华社"}\n'),
    ):
        with fs.open_output_stream(f"{BUCKET}/in/{name}") as f:
            f.write(text.encode())
    out = tmp_path / "labels"
    config = LabelConfig(model=model, inputs=(uri,), output=str(out), progress=False)

    manifest = label_corpus(config)
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (4, 4, 0)
    rows = sorted((r["source"], r["line"]) for r in pq.read_table(out).to_pylist())
    assert rows == [
        (f"s3://{BUCKET}/in/a.txt", 1),
        (f"s3://{BUCKET}/in/a.txt", 2),
        (f"s3://{BUCKET}/in/b.jsonl", 1),
        (f"s3://{BUCKET}/in/b.jsonl", 2),
    ]
    assert SECRET not in (out / "_manifest.json").read_text()

    # an archived object: listed, but the store refuses its bytes (moto answers InvalidObjectState)
    boto3.client(
        "s3",
        endpoint_url=f"http://{s3_endpoint}",
        aws_access_key_id="key",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).put_object(Bucket=BUCKET, Key="in/cold.txt", Body="冷\n".encode(), StorageClass="GLACIER")
    with pytest.raises(
        InputUnreadable
    ) as err:  # Ray's RayTaskError(InputUnreadable); the CLI prints its line
        label_corpus(config)
    assert re.match(
        rf"input s3://{BUCKET}/in/cold\.txt cannot be read: AWS Error INTERNAL_FAILURE during GetObject "
        rf"operation: ",
        first_line(unwrapped(err.value)),
    )
    assert SECRET not in str(err.value)


@pytest.mark.slow
@pytest.mark.ci
def test_pretraining_writes_to_a_uri_and_fine_tuning_starts_from_it_there(tmp_path, s3_endpoint):
    """``output_dir`` at a URI for pre-training, and ``model.checkpoint`` at a URI for fine-tuning:
    the published folder is on the store (no local folder named after the URI), and a model
    built from the URI holds exactly its weights (each node fetches the folder into its own cache)."""
    import numpy as np
    import pyarrow.fs as pafs
    import tensorflow as tf
    from test_pretrain import _cfg, _corpus

    from albert_ray import modeldir, paths
    from albert_ray.model.encoder_config import EncoderConfig
    from albert_ray.pretrain.driver import pretrain
    from albert_ray.spec import ModelSpec

    uri = f"s3://{CREDENTIALS}{BUCKET}/pre?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    _corpus(tmp_path)
    summary = pretrain(_cfg(tmp_path, "train.epochs=1", f"output_dir={uri}"), in_process=True)
    folder = paths.join(uri, "p", "pretrained")
    assert summary["pretrained_dir"] == paths.without_credentials(folder) and SECRET not in json.dumps(
        summary
    )
    assert sorted(paths.files_under(folder)) == [
        "albert_config.json",
        "checkpoint",
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
        "pretrain.json",
        "train_state.json",
        "vocab.txt",
    ]
    assert not Path("s3:").exists() and not (tmp_path / "out").exists()

    job = load_job_config(
        "jobs/configs/sample_classify.yaml",
        ["model.init=checkpoint", f"model.checkpoint={folder}", "model.max_len=32"],
    )
    local = paths.local_folder(folder)
    assert (job.model.encoder_config, job.model.vocab) == (
        str(local / "albert_config.json"),
        str(local / "vocab.txt"),
    )
    spec = ModelSpec.from_job(job, ("a", "b"), EncoderConfig.from_json_file(job.model.encoder_config))
    model = modeldir.new_model(spec, checkpoint=job.model.checkpoint)
    reader = tf.train.load_checkpoint(str(local / "model.ckpt"))
    np.testing.assert_array_equal(
        model.get_layer("Embedding-Token").weights[0].numpy(),
        reader.get_tensor("bert/embeddings/word_embeddings"),
    )
