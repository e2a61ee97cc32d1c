"""The NEON tree-crown benchmark: human-labelled aerial RGB images with Pascal VOC boxes, read from the
``deepforest`` wheel on the package index (downloaded without installing it or its dependencies).

Train on ``2019_YELL_2_528000_4978000_image_crop2`` (2299 x 2472 px, 574 trees), validate on
``2019_YELL_2_541000_4977000_image_crop`` (1249 x 1035 px, 279 trees): :func:`write_neon_trees` writes
``DIR/train/<name>.png + .xml`` and ``DIR/val/<name>.png + .xml`` (loose VOC files beside their images).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from detloss.core.atomic import atomic_write

__all__ = ["NEON_SPLITS", "WHEEL_REQUIREMENT", "download_wheel", "write_neon_trees"]

WHEEL_REQUIREMENT = "deepforest==2.1.0"
#: split -> image stem inside the wheel's ``deepforest/data/`` folder
NEON_SPLITS = {
    "train": "2019_YELL_2_528000_4978000_image_crop2",
    "val": "2019_YELL_2_541000_4977000_image_crop",
}


def download_wheel(dest: str | Path) -> Path:
    """``pip download deepforest==2.1.0 --no-deps`` into ``dest``; the wheel's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("deepforest-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ValueError(f"could not download {WHEEL_REQUIREMENT} ({' '.join(cmd)}):\n{done.stderr.strip()[-2000:]}")
    return wheels[-1]


def write_neon_trees(out_dir: str | Path, wheel: str | Path | None = None) -> dict[str, Path]:
    """Write the two NEON images and their VOC XML files from ``wheel`` (downloaded when ``None``) into
    ``out_dir/train`` and ``out_dir/val``; returns ``{split: folder}``. Files are written atomically."""
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(wheel) if wheel is not None else download_wheel(tmp)
        if not path.is_file():
            raise FileNotFoundError(f"wheel {path} does not exist")
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise ValueError(f"wheel {path} is not a zip archive") from None
        with archive:
            names = set(archive.namelist())
            folders = {}
            for split, stem in NEON_SPLITS.items():
                folder = out / split
                folder.mkdir(parents=True, exist_ok=True)
                for suffix in (".png", ".xml"):
                    member = f"deepforest/data/{stem}{suffix}"
                    if member not in names:
                        raise ValueError(f"wheel {path} has no {member} (expected {WHEEL_REQUIREMENT})")
                    with atomic_write(folder / f"{stem}{suffix}", "wb") as f:
                        f.write(archive.read(member))
                folders[split] = folder
    return folders
