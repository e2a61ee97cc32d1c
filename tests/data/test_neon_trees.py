"""`detloss data neon-trees DIR --wheel W` writes the two NEON images and their VOC files from a wheel
(a fake wheel here: the tests never download)."""

from __future__ import annotations

import zipfile

import pytest

from detloss.cli import main
from detloss.data.neon_trees import NEON_SPLITS, write_neon_trees


def _wheel(path, skip=None):
    with zipfile.ZipFile(path, "w") as z:
        for stem in NEON_SPLITS.values():
            for suffix in (".png", ".xml"):
                name = f"deepforest/data/{stem}{suffix}"
                if name != skip:
                    z.writestr(name, f"{stem}{suffix} bytes")
        z.writestr("deepforest/data/OSBS_029.png", "another image")
    return path


def test_writes_train_and_val_folders_from_the_wheel(tmp_path, capsys):
    wheel = _wheel(tmp_path / "deepforest-2.1.0-py3-none-any.whl")
    assert main(["data", "neon-trees", str(tmp_path / "neon"), "--wheel", str(wheel)]) == 0
    for split, stem in NEON_SPLITS.items():
        files = sorted(p.name for p in (tmp_path / "neon" / split).iterdir())
        assert files == [f"{stem}.png", f"{stem}.xml"]
        assert (tmp_path / "neon" / split / f"{stem}.xml").read_text() == f"{stem}.xml bytes"
    assert "train:" in capsys.readouterr().out


def test_a_wheel_without_the_images_or_not_a_zip_is_an_error_naming_it(tmp_path):
    member = f"deepforest/data/{NEON_SPLITS['val']}.xml"
    wheel = _wheel(tmp_path / "w.whl", skip=member)
    with pytest.raises(ValueError, match=f"w.whl has no {member}"):
        write_neon_trees(tmp_path / "out", wheel)
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="bad.whl is not a zip archive"):
        write_neon_trees(tmp_path / "out", tmp_path / "bad.whl")
    with pytest.raises(FileNotFoundError, match="missing.whl"):
        write_neon_trees(tmp_path / "out", tmp_path / "missing.whl")
