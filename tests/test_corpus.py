"""The corpus read path: inputs, byte-range units, one-pass reading with exact line numbers, and
every bad-row kind quarantined with its reason (no Ray, no TensorFlow)."""

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_ray.io.corpus import (
    ReadOptions,
    expand_inputs,
    input_roots,
    physical_lines,
    plan_units,
    read_file,
    read_task,
)


def _task(f, units, done=None, ends=None):
    return read_task(f, units, {uid: ends[uid] for uid in done or ()})


def _read(task, opts=None, block_rows=1024):
    opts = opts or ReadOptions()
    rows, ends = [], {}
    for table in read_file(task, opts, block_rows):
        assert sum(1 for m in table.column("meta").to_pylist() if m is None) <= block_rows
        for r in table.to_pylist():
            if r["meta"]:
                ends[r["unit"]] = json.loads(r["meta"])
            else:
                rows.append(r)
    return rows, ends


def _one_file(path, unit_bytes=1 << 20, fmt="auto"):
    files = expand_inputs([str(path)], fmt)
    return files[0], plan_units(files, unit_bytes)


def test_byte_range_units_read_every_line_once_with_exact_line_numbers(tmp_path):
    """Random files (CRLF, BOM, no final newline, empty and whitespace lines at unit borders)
    cut into random unit sizes: every line comes out once, in its unit, with its line number;
    reading only some units (a resume) gives exactly those units' rows and end records."""
    rng = random.Random(7)
    for trial in range(250):
        lines = [
            rng.choice(["", " ", "ab", "中文字", "好\r", "x" * rng.randint(1, 40)])
            for _ in range(rng.randint(0, 30))
        ]
        newline = rng.choice(["\n", "\r\n"])
        body = newline.join(lines) + (newline if rng.random() < 0.5 else "")
        bom = rng.random() < 0.3
        raw = (b"\xef\xbb\xbf" if bom else b"") + body.encode()
        (tmp_path / "in.txt").write_bytes(raw)
        expected = (raw[3:] if bom else raw).split(b"\n")
        if expected[-1] == b"":
            expected.pop()
        expected = [x[:-1] if x.endswith(b"\r") else x for x in expected]

        f, units = _one_file(tmp_path / "in.txt", unit_bytes=rng.randint(1, 60))
        assert units[-1].stop == f.size and all(a.stop == b.start for a, b in zip(units, units[1:]))
        rows, ends = _read(_task(f, units), block_rows=rng.randint(1, 7))
        want = [
            (i + 1, x.decode(), None if x.decode().strip() else "empty text") for i, x in enumerate(expected)
        ]
        assert [
            (r["line"], r["text"] if r["text"] is not None else r["raw"], r["reason"]) for r in rows
        ] == want, trial
        assert set(ends) == {u.uid for u in units}
        assert sum(e["rows"] for e in ends.values()) == len(expected)
        for u in units:  # a line belongs to the unit its first byte lies in, rows numbered in it
            mine = [r for r in rows if r["unit"] == u.uid]
            assert [r["row"] for r in mine] == list(range(ends[u.uid]["rows"]))

        done = {u.uid for u in units if rng.random() < 0.5}
        resumed, resumed_ends = _read(_task(f, units, done, ends), block_rows=3)
        assert resumed == [r for r in rows if r["unit"] not in done], trial
        assert resumed_ends == {u: e for u, e in ends.items() if u not in done}


def test_text_and_jsonl_bad_rows_are_quarantined_with_their_reasons(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join(
            [
                '{"text": "\u597d", "id": 7}',  # 1 ok, despite the BOM
                '{"text": "abc\\ud83d"}',  # 2 a truncated emoji
                '{"text": null}',
                '{"txt": "x"}',
                '{"text": 5}',
                "[1, 2]",
                "{bad",
                '{"text": "a\\u0000b"}',
                '{"text": "  "}',
                '{"text": "' + "长" * 41 + '"}',
            ]
        ).encode()
        + b"\n"
        + b'{"text": "\xff"}\n'
    )
    f, units = _one_file(tmp_path / "a.jsonl")
    rows, _ = _read(_task(f, units), ReadOptions(id_field="id", max_chars=40))
    assert [(r["line"], r["id"], r["text"], r["reason"]) for r in rows] == [
        (1, "7", "好", None),
        (2, None, None, "lone surrogate (at character 3: a truncated emoji or escape)"),
        (3, None, None, "null field 'text'"),
        (4, None, None, "missing field 'text'"),
        (5, None, None, "field 'text' is not a string (int)"),
        (6, None, None, "not a JSON object (list)"),
        (7, None, None, "not valid JSON (Expecting property name enclosed in double quotes)"),
        (8, None, None, "NUL character (at character 1)"),
        (9, None, None, "empty text"),
        (10, None, None, "text too long (41 characters, max_chars=40)"),
        (11, None, None, "not valid UTF-8 (byte 10)"),
    ]
    assert rows[1]["raw"] == '{"text": "abc\\ud83d"}' and rows[0]["raw"] is None

    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf\xe5\xbc\xa0\xe4\xbc\x9f\r\nx\x00y\r\n\xc3\x28\r\nlast")
    f, units = _one_file(tmp_path / "b.txt")
    rows, _ = _read(_task(f, units))
    assert [(r["line"], r["text"], r["reason"]) for r in rows] == [
        (1, "张伟", None),
        (2, None, "NUL character (at character 1)"),
        (3, None, "not valid UTF-8 (byte 0)"),
        (4, "last", None),
    ]


def test_csv_bom_header_field_counts_and_unterminated_quotes(tmp_path):
    (tmp_path / "a.csv").write_bytes(
        b"\xef\xbb\xbf"
        + "\r\n".join(
            [
                "text,id",  # 1 header (Excel's BOM)
                "\u4f60\u597d,1",  # 2
                '"\u591a\n\u884c",2',  # 3-4 a legitimate quoted newline (read as \n)
                "only-one-field",  # 5
                "a,b,c",  # 6
                "",  # 7
                '"open quote,3',  # 8 swallows the next lines...
                "\u540e\u9762,4",  # 9  ...which are read again
                'x"y,5',  # 10
                "\u6700\u540e,6",  # 11
                '"never closed,7',  # 12 open to the end of the file
                "\u5c3e\u5df4,8",  # 13
            ]
        )
        .replace("\n\u884c", "\n\u884c")
        .encode()
        + b"\r\n"
    )
    f, units = _one_file(tmp_path / "a.csv")
    assert [(u.start, u.stop) for u in units] == [(0, -1)]  # a quoted field may hold a newline
    rows, ends = _read(_task(f, units), ReadOptions(id_field="id"))
    got = [(r["line"], r["id"], r["text"], r["reason"]) for r in rows]
    assert got[:4] == [
        (2, "1", "你好", None),
        (3, "2", "多\n行", None),
        (5, None, None, "wrong number of fields (1, the header has 2)"),
        (6, None, None, "wrong number of fields (3, the header has 2)"),
    ]
    assert got[4] == (7, None, None, "empty line")
    assert got[5][0] == 8 and got[5][3].startswith("unterminated quote (the record ran over lines 8-")
    assert (9, "4", "后面", None) in got and (11, "6", "最后", None) in got
    assert got[-2] == (
        12,
        None,
        None,
        "unterminated quote (from line 12 to the end of the file; the following lines are read again)",
    )
    assert got[-1] == (13, "8", "尾巴", None)
    assert ends[units[0].uid]["rows"] == len(rows)


def test_truncated_gzip_keeps_the_rows_before_the_damage(tmp_path):
    lines = [f"第{i}行的文本" for i in range(3000)]
    data = gzip.compress("\n".join(lines).encode())
    (tmp_path / "bad.txt.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "good.txt.gz").write_bytes(data)
    files = expand_inputs([str(tmp_path)])
    units = plan_units(files, 10)
    assert [(u.start, u.stop) for u in units] == [(0, -1), (0, -1)]  # compressed: whole-file units
    bad_rows, _ = _read(_task(files[0], units[:1]))
    good_rows, ends = _read(_task(files[1], units[1:]))
    assert [r["text"] for r in good_rows] == lines
    damaged = bad_rows[-1]
    assert damaged["reason"].startswith(
        "truncated or corrupt compressed file (EOFError: Compressed file ended "
        "before the end-of-stream marker was reached; "
    )
    assert damaged["source"].endswith("bad.txt.gz")
    kept = bad_rows[:-1]
    assert len(kept) > 100 and [r["text"] for r in kept] == lines[: len(kept)]
    assert (
        f"; {sum(len(x.encode()) + 1 for x in lines[: len(kept)]) + len(damaged['raw'].encode())} bytes"
        f" decompressed" in damaged["reason"]
    )
    assert damaged["line"] == len(kept) + 1


def test_parquet_units_are_row_groups_with_row_numbers(tmp_path):
    table = pa.table({"text": ["一", None, "", "二", "三"], "key": [1, 2, 3, 4, 5]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    files = expand_inputs([str(tmp_path)])
    units = plan_units(files, 1)
    assert [(u.path.rsplit("/", 1)[1], u.start, u.stop) for u in units] == [
        ("a.parquet", 0, 1),
        ("a.parquet", 1, 2),
        ("a.parquet", 2, 3),
        ("b.parquet", 0, 1),
    ]
    rows, ends = _read(_task(files[0], units[:3]), ReadOptions(id_field="key"))
    assert [(r["line"], r["id"], r["text"], r["reason"]) for r in rows] == [
        (1, "1", "一", None),
        (2, "2", None, "null field 'text'"),
        (3, "3", None, "empty text"),
        (4, "4", "二", None),
        (5, "5", "三", None),
    ]
    assert [ends[u.uid]["rows"] for u in units[:3]] == [2, 2, 1]
    rows, _ = _read(_task(files[1], units[3:]))
    assert [r["reason"] for r in rows] == ["field 'text' is not a string (int64)"] * 2


def test_a_parquet_file_that_does_not_decode_is_a_quarantine_row_but_a_failing_source_is_the_tasks_error(
    tmp_path, monkeypatch
):
    import io

    from albert_ray.errors import InputUnreadable
    from albert_ray.io import corpus

    pq.write_table(
        pa.table({"text": ["一二三四五六七八九十" * 50] * 40}), tmp_path / "a.parquet", compression="none"
    )
    data = (tmp_path / "a.parquet").read_bytes()
    files = expand_inputs([str(tmp_path / "a.parquet")])
    units = plan_units(files, 1)

    # the column's bytes overwritten with garbage, the footer intact: the file is at fault
    damaged = bytearray(data)
    damaged[4:200] = b"\xff" * 196
    (tmp_path / "a.parquet").write_bytes(bytes(damaged))
    rows, ends = _read(_task(files[0], units))
    assert [(r["line"], r["text"]) for r in rows] == [(1, None)]
    assert rows[0]["reason"] == (
        "unreadable Parquet (Couldn't deserialize thrift: don't know what type: \\x0f; "
        "Deserializing page header failed.)"
    )

    # the footer read, then the store fails to give the column's bytes: the read task fails, in one line
    class Flaky(io.BytesIO):
        def read(self, n=-1):
            if self.tell() < len(data) // 2:
                raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: connection reset")
            return super().read(n)

    class Store:
        def open_input_file(self, path):
            return Flaky(data)

    monkeypatch.setattr(corpus, "fs_and_path", lambda uri: (Store(), uri))
    with pytest.raises(InputUnreadable) as caught:
        _read(_task(files[0], units))
    assert str(caught.value) == (
        f"input {files[0].path} cannot be read: AWS Error NETWORK_CONNECTION during "
        "GetObject operation: connection reset"
    )


def test_inputs_skip_hidden_names_and_roots_of_globs(tmp_path):
    (tmp_path / "d" / "_quarantine").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("x\n")
    (tmp_path / "d" / "_quarantine" / "q.txt").write_text("x\n")
    (tmp_path / "d" / ".hidden").write_text("x\n")
    files = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "a.txt")])
    assert [f.path for f in files] == [str(tmp_path / "d" / "a.txt")]  # once
    assert files[0].size == 2 and files[0].mtime_ns > 0
    assert input_roots([str(tmp_path / "d"), str(tmp_path / "d" / "*.txt"), "s3://b/x"]) == [
        str(tmp_path / "d"),
        str(tmp_path / "d"),
    ]
    with pytest.raises(FileNotFoundError, match=r"input '.*\*\.nothing' matches no file"):
        expand_inputs([str(tmp_path / "*.nothing")])


def test_physical_lines_offsets_resume_mid_file(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfab\r\ncd\nef")
    assert list(physical_lines(str(tmp_path / "a.txt"))) == [(0, b"ab", 7), (7, b"cd", 10), (10, b"ef", 12)]
    assert list(physical_lines(str(tmp_path / "a.txt"), 7)) == [(7, b"cd", 10), (10, b"ef", 12)]


def test_a_file_under_a_uri_input_is_opened_with_the_inputs_credentials_and_options_and_shown_without_them():
    from albert_ray.io.corpus import file_uris
    from albert_ray.paths import without_credentials

    item = "s3://KEY:SECRET@bucket/in?endpoint_override=127.0.0.1:9000&scheme=http"
    assert file_uris(item, "bucket/in", "bucket/in/sub/a.txt") == (
        "s3://bucket/in/sub/a.txt",
        "s3://KEY:SECRET@bucket/in/sub/a.txt?endpoint_override=127.0.0.1:9000&scheme=http",
    )
    assert (
        file_uris("s3://bucket/in/a.txt", "bucket/in/a.txt", "bucket/in/a.txt")
        == ("s3://bucket/in/a.txt",) * 2
    )
    assert file_uris("s3://bucket", "bucket", "bucket/a.txt") == ("s3://bucket/a.txt",) * 2
    # a host and port that are not in the filesystem's paths stay in the URI
    assert (
        file_uris("hdfs://namenode:8020/data/", "/data", "/data/x/a.txt")
        == ("hdfs://namenode:8020/data/x/a.txt",) * 2
    )
    assert without_credentials(item) == "s3://bucket/in?endpoint_override=127.0.0.1:9000&scheme=http"
    assert without_credentials("s3://bucket/in") == "s3://bucket/in"
    assert without_credentials("/data/a@b.txt") == "/data/a@b.txt"
