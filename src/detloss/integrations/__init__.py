"""Adapters that put detloss inside other frameworks' training: :mod:`.ultralytics`, :mod:`.torchvision`.

Each imports its framework lazily (only when used), so ``import detloss`` never needs them; install
them with the extras ``detloss[ultralytics]`` / ``detloss[torchvision]``.
"""
