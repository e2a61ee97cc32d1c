"""Config overrides for a training run that takes seconds (smoke tests, examples)."""

#: ``detloss train`` / ``load_config`` overrides: 64 px shapes, 16 training images, a width-8 model.
TINY_RUN = [
    "data.image_size=64",
    "data.train_images=16",
    "data.val_images=4",
    "data.max_objects=2",
    "model.width=8",
    "batch_size=4",
    "loss.reg_max=4",
    "loss.num_vertices=6",
    "eval.plots=false",
    "threads=1",
]
