"""Every numeric config field has a range; a value outside it is a ValidationError naming the field."""

from __future__ import annotations

import pydantic
import pytest

from detloss.train.config import TrainConfig, load_config

#: (override, the field the message names, what it says). The first seven are the issue's reproductions:
#: 1e400 trained NaN weights, -1 flipped the gradients' sign, -1 / -4 trained nothing with exit code 0,
#: 0 divided by zero, and num_vertices=-1 failed deep inside torch.
BAD_VALUES = [
    ("optim.lr=1e400", "optim.lr", "finite number"),
    ("optim.grad_clip=-1", "optim.grad_clip", "greater than 0"),
    ("epochs=-1", "epochs", "greater than or equal to 1"),
    ("batch_size=-4", "batch_size", "greater than or equal to 1"),
    ("batch_size=0", "batch_size", "greater than or equal to 1"),
    ("eval.every_epochs=0", "eval.every_epochs", "greater than or equal to 1"),
    ("loss.num_vertices=-1", "loss.num_vertices", "greater than or equal to 0"),
    ("loss.num_vertices=2", "loss.num_vertices", "0 (no polygon branch) or >= 3"),
    ("optim.lr=0", "optim.lr", "greater than 0"),
    ("optim.lr=.nan", "optim.lr", "finite number"),
    ("optim.momentum=1", "optim.momentum", "less than 1"),
    ("optim.ema_decay=1.5", "optim.ema_decay", "less than 1"),
    ("optim.final_lr_fraction=2", "optim.final_lr_fraction", "less than or equal to 1"),
    ("data.hflip=1.5", "data.hflip", "less than or equal to 1"),
    ("data.image_size=16", "data.image_size", "greater than or equal to 32"),
    ("data.num_classes=0", "data.num_classes", "greater than or equal to 1"),
    ("loss.weights={cls: -1}", "loss.weights.cls", "greater than or equal to 0"),
    ("loss.weights={cls: .inf}", "loss.weights.cls", "finite number"),
    ("model.stride=12", "model.stride", "power of 2"),
    ("rpn.neg_iou=0.8", "rpn", "neg_iou (0.8) must be <= pos_iou (0.7)"),
    ("roi.pos_iou=1.5", "roi.pos_iou", "less than or equal to 1"),
    ("eval.conf=-0.1", "eval.conf", "greater than or equal to 0"),
    ("balance.weight_bounds=[2, 1]", "balance.weight_bounds", "low <= high"),
    ("balance.log_var_bounds=[-100, 4]", "balance.log_var_bounds.0", "greater than or equal to -20"),
    ("max_steps=0", "max_steps", "greater than or equal to 1"),
    ("threads=0", "threads", "greater than or equal to 1"),
]


@pytest.mark.parametrize(("override", "field", "says"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_value_outside_its_range_names_the_field(override, field, says):
    with pytest.raises(pydantic.ValidationError) as err:
        load_config(None, [override])
    assert isinstance(err.value, ValueError)  # the CLI turns it into "detloss: ..." and exit code 2
    lines = str(err.value).splitlines()
    assert field in lines and says in lines[lines.index(field) + 1], str(err.value)


def _numeric_without_range(node: dict, defs: dict, where: str) -> list[str]:
    """Paths of the integer / number schemas under ``node`` that have neither a minimum nor a maximum."""
    if "$ref" in node:
        return _numeric_without_range(defs[node["$ref"].rsplit("/", 1)[-1]], defs, where)
    found = []
    if node.get("type") in ("integer", "number") and not {"minimum", "exclusiveMinimum"} & set(node):
        found.append(where)
    for name, sub in node.get("properties", {}).items():
        found += _numeric_without_range(sub, defs, f"{where}.{name}")
    for key in ("anyOf", "allOf", "prefixItems"):
        for i, sub in enumerate(node.get(key, [])):
            found += _numeric_without_range(sub, defs, f"{where}[{i}]" if key == "prefixItems" else where)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _numeric_without_range(node[key], defs, f"{where}[]")
    return found


def test_every_numeric_field_has_a_lower_bound():
    schema = TrainConfig.model_json_schema()
    assert _numeric_without_range(schema, schema["$defs"], "TrainConfig") == []
    # the walk does see the fields: the learning rate's bound is an exclusive minimum of 0
    assert schema["$defs"]["OptimConfig"]["properties"]["lr"]["exclusiveMinimum"] == 0


def test_the_defaults_and_the_shipped_configs_are_in_range():
    from pathlib import Path

    TrainConfig()
    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        load_config(path)
