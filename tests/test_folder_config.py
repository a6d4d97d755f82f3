"""One reader of a saved folder's config.json for LTE, LETA and probes: each refusal is one ModelError line."""

from __future__ import annotations

import json

import pytest

from explainers.errors import ModelError
from explainers.io.folder import read_folder_config
from explainers.learned.leta.explainer import read_leta_config
from explainers.learned.lte.explainer import LTEExplainer
from explainers.models.probe import load_probe


def read(directory):
    return read_folder_config(
        directory, what="a test folder", format_name="test-format", newest_version=2, how_to_make="run `make-it`"
    )


def write(directory, payload) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(payload if isinstance(payload, str) else json.dumps(payload))


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (None, r"is not a test folder \(no config.json\); run `make-it`"),
        ("{not json", "is not valid JSON"),
        ([1, 2], r"config format None, expected 'test-format'"),
        ({"format": "other", "version": 1}, r"config format 'other', expected 'test-format'"),
        (
            {"format": "test-format", "version": 3},
            r"newer explainers \(a test folder format 3, this library reads up to 2\)",
        ),
        ({"format": "test-format", "version": "2"}, "version must be an integer, got '2'"),
        ({"format": "test-format", "version": True}, "version must be an integer"),
    ],
)
def test_each_bad_folder_is_one_line(tmp_path, payload, fragment):
    folder = tmp_path / "saved"
    if payload is not None:
        write(folder, payload)
    with pytest.raises(ModelError, match=fragment) as info:
        read(folder)
    assert "\n" not in str(info.value)


def test_a_good_config_is_returned_whole(tmp_path):
    write(tmp_path, {"format": "test-format", "version": 2, "extra": [1]})
    assert read(tmp_path) == {"format": "test-format", "version": 2, "extra": [1]}
    write(tmp_path, {"format": "test-format"})  # no version key: version 0, read
    assert read(tmp_path)["format"] == "test-format"


def test_lte_leta_and_probe_readers_use_it(tmp_path):
    write(tmp_path, {"format": "something-else"})
    with pytest.raises(ModelError, match="is not an LTE explainer checkpoint"):
        LTEExplainer.read_metadata(tmp_path)
    with pytest.raises(ModelError, match="is not a LETA explainer"):
        read_leta_config(tmp_path)
    with pytest.raises(ModelError, match="is not a linear probe"):
        load_probe(tmp_path)
