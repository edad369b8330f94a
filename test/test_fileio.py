"""The one atomic writer: round trips, and a failed write leaves the old file and no temporary."""
import csv
import json

import pytest
import yaml

from lpcv_segmentation.core.fileio import (atomic_path, copy_file_atomic, write_csv_atomic,
                                           write_json_atomic, write_text_atomic, write_yaml_atomic)


def test_writers_round_trip(tmp_path):
    write_json_atomic(tmp_path / "a" / "r.json", {"x": 1.5, "path": tmp_path})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1.5, "path": str(tmp_path)}
    write_csv_atomic(tmp_path / "t.csv", [{"a": 1 / 3, "b": "s", "extra": 0}], ["a", "b"],
                     float_format="%.3g")
    with open(tmp_path / "t.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"a": "0.333", "b": "s"}]
    write_yaml_atomic(tmp_path / "c.yaml", {"z": 1, "a": [1, 2]}, header="# hi\n")
    text = (tmp_path / "c.yaml").read_text()
    assert text.startswith("# hi\nz: 1\n") and yaml.safe_load(text) == {"z": 1, "a": [1, 2]}
    copy_file_atomic(tmp_path / "c.yaml", tmp_path / "d.yaml")
    assert (tmp_path / "d.yaml").read_text() == text
    assert not list(tmp_path.rglob("*.tmp.*"))


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(target, suffix=".onnx") as tmp:
            assert tmp.endswith(".onnx") and tmp != str(target)
            with open(tmp, "w") as handle:
                handle.write("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
