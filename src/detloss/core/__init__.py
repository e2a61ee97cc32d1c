"""The core every layer builds on: terms and reports, named normalizers, the distributed helpers (world size,
the one all-reduce of sums, the batch-split check),
input checks and the non-finite debugger. Imports nothing else from detloss."""

from detloss.core.normalize import NORMALIZERS, Normalizer, denominators
from detloss.core.report import LossReport, TermRecord, make_term

__all__ = ["NORMALIZERS", "LossReport", "Normalizer", "TermRecord", "denominators", "make_term"]
