import pytest

from albert_ray.finetune.config import JobConfigError, load_job_config

BASE = {"name": "x", "task": "ner", "data": {"train": "t.bio"}}


def test_defaults_and_dotted_overrides():
    cfg = load_job_config(
        data=BASE, overrides=["train.epochs=7", "model.max_len=64", "data.dev=d.bio", "model.stride="]
    )
    assert (cfg.train.epochs, cfg.model.max_len, cfg.data.dev, cfg.model.stride) == (7, 64, "d.bio", None)
    assert cfg.train.learning_rate == 5e-5 and cfg.model_dir == "runs/x/model"
    assert BASE["data"] == {"train": "t.bio"}  # the input dict is not mutated


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["task=tagging"], "task='tagging': must be one of ['classify', 'multilabel', 'ner']"),
        (["model.scheme=IOB"], "model.scheme='IOB': must be one of ['BIO', 'BIOES']"),
        (["train.epochs=0"], "train.epochs=0: must be > 0"),
        (["train.epochs=two"], "train.epochs='two': must be int"),
        (["train.epoch=2"], "train.epoch: unknown field; allowed:"),
        (["model.init=checkpoint"], "model.checkpoint: required when model.init is 'checkpoint'"),
        (["model.dropout=1.5"], "model.dropout=1.5: must be in [0, 1)"),
        (["data.on_bad_records=ignore"], "data.on_bad_records='ignore': must be one of ['error', 'skip']"),
        (["epochs"], "override 'epochs': expected key=value"),
    ],
)
def test_validation_names_field_and_allowed_values(overrides, message):
    with pytest.raises(JobConfigError) as err:
        load_job_config(data=BASE, overrides=overrides)
    assert message in str(err.value)


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(JobConfigError, match="data.train: required field is missing"):
        load_job_config(data={"name": "x", "task": "ner", "data": {}})
    with pytest.raises(FileNotFoundError, match="job config not found"):
        load_job_config(tmp_path / "nope.yaml")


def test_bundled_configs_load():
    from pathlib import Path

    for path in sorted(Path("jobs/configs").glob("*.yaml")):
        cfg = load_job_config(path)
        assert cfg.name == path.stem


def test_mixed_precision_is_accepted_for_albert_and_refused_for_bert_with_the_reason(tmp_path):
    import json

    assert load_job_config(data=BASE, overrides=["train.mixed_precision=true"]).train.mixed_precision is True
    bert = tmp_path / "bert_config.json"
    bert.write_text(
        json.dumps(
            {
                "vocab_size": 100,
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 64,
                "type_vocab_size": 2,
            }
        )
    )
    with pytest.raises(
        JobConfigError,
        match=r"train.mixed_precision=true: not available for the BERT layout of "
        r".*bert_config.json \(built by keras-bert's get_model",
    ):
        load_job_config(data=BASE, overrides=["train.mixed_precision=true", f"model.encoder_config={bert}"])
