"""atomic_write: a write that fails half-way leaves the previous file as it was."""

from __future__ import annotations

import pytest

from detloss.core.atomic import atomic_write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous, complete")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(path, "wb") as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"previous, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with atomic_write(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
