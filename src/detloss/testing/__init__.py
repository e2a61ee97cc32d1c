"""Helpers for checking loss code: multi-process (gloo) runs for DDP equivalence tests, torchrun runs."""

from detloss.testing.ddp import ddp_and_single_gradients, spawn_gloo, torchrun_train

__all__ = ["ddp_and_single_gradients", "spawn_gloo", "torchrun_train"]
