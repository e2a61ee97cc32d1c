"""Helpers for checking loss code: multi-process (gloo) runs for DDP equivalence tests."""

from detloss.testing.ddp import ddp_and_single_gradients, spawn_gloo

__all__ = ["ddp_and_single_gradients", "spawn_gloo"]
