"""The loss doctor: gradient accounting per term and health findings with concrete fixes.

Example:
    >>> report = crit(feats, targets)                                        # doctest: +SKIP
    >>> acc = gradient_accounting(report, feats,                             # doctest: +SKIP
    ...                           depends=dense_dependencies(crit, feats, targets))
    >>> print(acc.table())                                                   # doctest: +SKIP
    >>> for f in check_dominance(acc) + check_dead(acc):                     # doctest: +SKIP
    ...     print(f)
"""

from detloss.diagnose.dense import dense_dependencies
from detloss.diagnose.findings import (
    Finding,
    check_dead,
    check_detection_collapse,
    check_dominance,
    check_nonfinite,
    check_normalizer_skew,
    check_plateau,
    check_starved,
    term_names,
)
from detloss.diagnose.gradients import SATURATION_LIMIT, GradientAccount, gradient_accounting, saturation

__all__ = [
    "SATURATION_LIMIT",
    "Finding",
    "GradientAccount",
    "check_dead",
    "check_detection_collapse",
    "check_dominance",
    "check_nonfinite",
    "check_normalizer_skew",
    "check_plateau",
    "check_starved",
    "dense_dependencies",
    "gradient_accounting",
    "saturation",
    "term_names",
]
