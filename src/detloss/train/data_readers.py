"""The trainer's VOC, box-CSV and data.yaml datasets (``data.kind`` ``voc``, ``csv``, ``yolo`` + ``data.yaml``)."""

from __future__ import annotations

from detloss.train.config import DataConfig


def build_box_datasets(cfg: DataConfig, num_vertices: int, yaml_path: str | None):
    """``(train, val)`` raw datasets (pixel samples, ``class_names``, ``num_classes``), the validation set
    using the training set's class names, so both share the ids.

    * ``yolo`` with ``yaml_path``: the ``data.train_split`` / ``data.val_split`` keys of the data.yaml;
    * ``voc``: ``data.train_annotations`` / ``data.val_annotations`` (loose XML folders or files) when set,
      else the VOC root ``data.root`` with its ``ImageSets/Main/<data.train_split|val_split>.txt``;
    * ``csv``: the CSVs ``data.train_annotations`` / ``data.val_annotations``, images relative to
      ``data.root`` when set, else to each CSV's folder.
    """
    k = num_vertices
    if cfg.kind == "yolo":
        from detloss.data.data_yaml import YamlYoloDataset

        return YamlYoloDataset(yaml_path, cfg.train_split, k), YamlYoloDataset(yaml_path, cfg.val_split, k)
    if cfg.kind == "voc":
        from detloss.data.voc import VocDataset

        if cfg.train_annotations is not None or cfg.val_annotations is not None:
            if cfg.train_annotations is None or cfg.val_annotations is None:
                raise ValueError("data.kind='voc' with loose XML needs both data.train_annotations and val_annotations")
            train = VocDataset(cfg.train_annotations, class_names=cfg.names, num_vertices=k)
            return train, VocDataset(cfg.val_annotations, class_names=train.class_names, num_vertices=k)
        if cfg.root is None:
            raise ValueError("data.kind='voc' needs data.root (a VOC root) or data.train_annotations/val_annotations")
        train = VocDataset(cfg.root, cfg.train_split, class_names=cfg.names, num_vertices=k)
        return train, VocDataset(cfg.root, cfg.val_split, class_names=train.class_names, num_vertices=k)
    if cfg.kind == "csv":
        from detloss.data.box_csv import BoxCsvDataset

        if cfg.train_annotations is None or cfg.val_annotations is None:
            raise ValueError("data.kind='csv' needs data.train_annotations and data.val_annotations (the CSV files)")
        train = BoxCsvDataset(cfg.train_annotations, cfg.root, cfg.names, k)
        return train, BoxCsvDataset(cfg.val_annotations, cfg.root, train.class_names, k)
    raise ValueError(f"data.kind={cfg.kind!r} has no box reader here")
