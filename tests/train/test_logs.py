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


def test_drop_rows_after_keeps_the_rows_up_to_the_step_and_drops_a_torn_row(tmp_path):
    from detloss.train.logs import drop_rows_after

    path = tmp_path / "steps.csv"
    rows = "".join(f"{s},0,{s / 10}\n" for s in range(1, 7))
    path.write_text("step,epoch,total\n" + rows + "7,0")  # killed while appending step 7
    assert drop_rows_after(path, 4) == 3  # steps 5, 6 and the torn 7
    assert path.read_text() == "step,epoch,total\n1,0,0.1\n2,0,0.2\n3,0,0.3\n4,0,0.4\n"
    assert drop_rows_after(path, 4) == 0 and drop_rows_after(path, 0) == 4
    assert path.read_text() == "step,epoch,total\n" and sorted(p.name for p in tmp_path.iterdir()) == ["steps.csv"]
    # killed after writing "1" of step 10's row, right after the checkpoint of step 9: the 1 is no step 1
    path.write_text("step,epoch,total\n" + "".join(f"{s},0,{s / 10}\n" for s in range(1, 10)) + "1")
    assert drop_rows_after(path, 9) == 1
    assert path.read_text().splitlines()[-1] == "9,0,0.9"
