"""CsvLog keeps every column when later rows bring new keys."""

import math

from detloss.train.logs import CsvLog, read_csv


def test_new_keys_extend_the_header_and_keep_earlier_rows(tmp_path):
    log = CsvLog(tmp_path / "epochs.csv")
    log.write({"epoch": 1, "train/cls": 2.5})
    log.write({"epoch": 2, "train/cls": 2.0, "val/map50": 0.4})
    again = CsvLog(tmp_path / "epochs.csv")  # a resumed run appends with the extended header
    again.write({"epoch": 3, "train/cls": 1.5, "val/map50": 0.6})
    rows = read_csv(tmp_path / "epochs.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert math.isnan(rows[0]["val/map50"]) and rows[1]["val/map50"] == 0.4 and rows[2]["val/map50"] == 0.6
