"""The benchmarks' own modes that a user runs as one command (their measurements are not tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _release_folder(folder: Path, texts: list[str]) -> None:
    """A brightmart-style release folder: albert_config_tiny.json (a small shape), vocab.txt and
    a random albert_model.ckpt in the brightmart layout."""
    from albert_ray.model.checkpoint import encoder_variables, write_variables
    from albert_ray.model.encoder import build_encoder, initialize_encoder
    from albert_ray.model.encoder_config import EncoderConfig
    from albert_ray.model.tokenization import build_char_vocab

    vocab = build_char_vocab(texts)
    config = json.loads((ROOT / "data" / "albert_config_sample.json").read_text())
    config.update(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        embedding_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
    )
    folder.mkdir(parents=True)
    (folder / "albert_config_tiny.json").write_text(json.dumps(config))
    vocab.save(folder / "vocab.txt")
    enc = EncoderConfig.from_json_file(folder / "albert_config_tiny.json")
    model = build_encoder(enc)
    initialize_encoder(model, enc, seed=1)
    write_variables(folder / "albert_model.ckpt", encoder_variables(model, enc))


@pytest.mark.slow
@pytest.mark.ci  # two short fine-tunes from a checkpoint the test writes
def test_reference_table_fine_tunes_every_config_from_every_release_folder(tmp_path):
    from albert_ray.io.training_files import read_examples

    texts = [
        e.text
        for f in ("ner_sample.train.bio", "ner_sample.dev.bio", "ner_sample.test.bio")
        for e in read_examples(ROOT / "data" / f).examples
    ]
    texts += [e.text for e in read_examples(ROOT / "data" / "classify_sample.train.csv").examples]
    texts += [e.text for e in read_examples(ROOT / "data" / "classify_sample.test.csv").examples]
    _release_folder(tmp_path / "ckpts" / "albert_tiny_zh", texts)
    (tmp_path / "ckpts" / "notes").mkdir()  # not a release folder: ignored
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/pretrain_gain.py",
            "--checkpoints",
            str(tmp_path / "ckpts"),
            "--configs",
            "sample_ner,sample_classify",
            "--set",
            "train.epochs=1",
            "--set",
            "data.max_train_examples=200",
            "--output",
            str(tmp_path / "ref.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ref = json.loads((tmp_path / "ref.json").read_text())
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert (ref["command"], ref["commit"]) == (
        f"python benchmarks/pretrain_gain.py --checkpoints {tmp_path / 'ckpts'} --configs sample_ner,sample_classify "
        f"--set train.epochs=1 --set data.max_train_examples=200 --output {tmp_path / 'ref.json'}",
        head,
    )
    rows = ref["rows"]
    assert [(r["config"], r["size"], r["published"]) for r in rows] == [
        ("sample_ner", "tiny", None),
        ("sample_classify", "tiny", None),
    ]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    table = out.stdout.splitlines()
    header = table.index(f"{'config':<18}{'size':<8}{'score':>8}{'published':>11}")
    assert table[header + 1] == f"{'sample_ner':<18}{'tiny':<8}{rows[0]['score']:>8.4f}{'-':>11}"

    empty = subprocess.run(
        [sys.executable, "benchmarks/pretrain_gain.py", "--checkpoints", str(tmp_path / "ckpts" / "notes")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert empty.returncode == 1 and empty.stderr.strip().endswith(
        "notes: no brightmart release folder (albert_<size>_zh/ with a checkpoint) in it"
    )


@pytest.mark.corpora
def test_pretraining_text_holds_people_s_daily_training_part_and_no_evaluated_sentence(corpora, tmp_path):
    from albert_ray.finetune.config import load_job_config
    from albert_ray.finetune.driver import prepare
    from albert_ray.io.training_files import read_examples

    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import pretrain_gain as pg; "
        "print(json.dumps(pg.unlabelled_text(Path(sys.argv[1]), Path(sys.argv[2]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(corpora), str(tmp_path / "u.txt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(out.stdout.splitlines()[-1])
    lines = set((tmp_path / "u.txt").read_text(encoding="utf-8").splitlines())

    def norm(texts):
        return {" ".join(t.split()) for t in texts}

    pd = prepare(
        load_job_config(
            str(ROOT / "jobs/configs/peoples_daily.yaml"),
            [f"data.train={corpora}/peoples_daily/example.test"],
        )
    )
    evaluated = norm(e.text for e in pd.dev)
    evaluated |= norm(
        e.text for e in read_examples(corpora / "cluener" / "cluener.test", on_bad_records="skip").examples
    )
    evaluated |= norm(
        e.text
        for e in read_examples(
            corpora / "duee_event_types" / "test.csv", multilabel=True, on_bad_records="skip"
        ).examples
    )
    assert (len(pd.train), len(pd.dev)) == (4173, 463)
    assert lines & evaluated == set()
    assert norm(e.text for e in pd.train) - evaluated <= lines  # the job's training part, all of it
    assert stats["evaluated_lines_dropped"] == 1
    assert (
        stats["sources"]["peoples_daily_train"]["chars"]
        == sum(len(t) for t in norm(e.text for e in pd.train))
        > 190_000
    )
