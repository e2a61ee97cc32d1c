"""Pure element losses: each returns per-element values; reductions happen in :mod:`detloss.reduce`."""
