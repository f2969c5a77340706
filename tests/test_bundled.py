"""The encoder that ships with the project (albert_ray/model/bundled_encoder/): its published names
and shapes, its size, its record (no evaluated split in its corpus), and fine-tuning starting from
exactly its tensors wherever a job names no checkpoint."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from albert_ray import modeldir
from albert_ray.finetune.config import JobConfigError, load_job_config
from albert_ray.model import bundled
from albert_ray.model.checkpoint import encoder_variables, load_checkpoint
from albert_ray.model.encoder import build_encoder, encoder_for
from albert_ray.model.encoder_config import EncoderConfig
from albert_ray.model.tokenization import Vocab
from albert_ray.spec import ModelSpec

JOB = {"name": "t", "task": "ner", "data": {"train": "data/ner_sample.train.bio"}}


def stored():
    return tf.train.load_checkpoint(str(bundled.bundled_dir() / bundled.CHECKPOINT_PREFIX))


def test_the_bundled_encoder_has_its_published_names_and_shapes_in_float16_within_10_mb():
    folder = bundled.bundled_dir()
    config = EncoderConfig.from_json_file(folder / bundled.CONFIG_FILE)
    assert (config.layout, config.hidden_size, config.num_hidden_layers, config.embedding_size) == (
        "albert_brightmart",
        128,
        4,
        64,
    )
    vocab = Vocab.from_file(folder / bundled.VOCAB_FILE)
    assert len(vocab.tokens) == config.vocab_size == 21128
    assert vocab.tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    reader = stored()
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    names = {n for ns in encoder_for(config).variable_map().values() for n in ns}
    assert names <= set(shapes)
    assert shapes["bert/embeddings/word_embeddings"] == [21128, 64]
    assert {dtypes[n] for n in shapes} == {tf.float16}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 10 * 2**20, size
    report = load_checkpoint(build_encoder(config), config, folder)
    assert report.assigned == sum(len(ns) for ns in encoder_for(config).variable_map().values())


def test_the_record_names_its_corpus_and_no_evaluated_split():
    record = bundled.record()
    corpus = record["corpus_record"]
    assert set(corpus["sources"]) == {
        "cluener_train",
        "duee_train",
        "news_sample",
        "peoples_daily_train",
        "bundled_samples",
    }
    assert all(row["licence"] and row["lines"] > 0 for row in corpus["sources"].values())
    assert corpus["chars"] == sum(row["chars"] for row in corpus["sources"].values()) > 1_000_000
    assert not any(re.search(r"test|dev|sogou", name) for name in corpus["sources"])
    assert "sogou_mini/test.csv (its only split is a test split)" in corpus["excluded"]
    assert record["stored_dtype"] == "float16"
    last = record["history"][-1]
    assert 0 < last["heldout_accuracy"] < 1 and record["steps"] > 0


def test_a_job_that_names_no_checkpoint_starts_from_exactly_the_bundled_tensors():
    job = load_job_config(data=json.loads(json.dumps(JOB)))
    assert (job.model.init, job.model.vocab) == ("bundled", str(bundled.BUNDLED_DIR / "vocab.txt"))
    encoder = EncoderConfig.from_json_file(job.model.encoder_config)
    spec = ModelSpec.from_job(job, ["O", "B-PER", "I-PER"], encoder)
    model = modeldir.new_model(spec, checkpoint=job.model.start_checkpoint())
    reader = stored()
    for name, value in encoder_variables(model, encoder).items():
        np.testing.assert_array_equal(value, reader.get_tensor(name).astype(np.float32), err_msg=name)

    random = load_job_config(data=json.loads(json.dumps(JOB)), overrides=["model.init=none"])
    assert (random.model.init, random.model.vocab, random.model.start_checkpoint()) == ("none", "auto", None)
    spec = ModelSpec.from_job(random, ["O"], encoder)
    drawn = encoder_variables(modeldir.new_model(spec, seed=0), encoder)
    first = reader.get_tensor("bert/encoder/layer_shared/attention/self/query/kernel").astype(np.float32)
    assert not np.allclose(drawn["bert/encoder/layer_shared/attention/self/query/kernel"], first)


def test_a_pre_trained_start_refuses_a_corpus_vocabulary_in_one_line():
    with pytest.raises(
        JobConfigError,
        match=r"^model.vocab: a pre-trained start \(model.init=bundled\) needs its "
        r"own vocab.txt, not 'auto'$",
    ):
        load_job_config(data=json.loads(json.dumps(JOB)), overrides=["model.vocab=auto"])


def test_a_missing_bundled_encoder_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "bundled_encoder")
    with pytest.raises(
        bundled.BundledEncoderMissing,
        match=r"^the bundled encoder is missing from this install "
        r"\(.*bundled_encoder\); reinstall albert-ray, or set "
        r"model.init=none \(random start\)",
    ):
        load_job_config(data=json.loads(json.dumps(JOB)))
