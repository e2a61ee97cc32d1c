"""The loss doctor: gradient accounting per term and health findings with concrete fixes.

:class:`Doctor` records any training loop's steps (:meth:`Doctor.observe` takes a dict of loss tensors and
the tensors, parameters or module to take gradients with respect to) and runs every check over them.

Example:
    >>> report = crit(feats, targets)                                        # doctest: +SKIP
    >>> acc = gradient_accounting(report, feats,                             # doctest: +SKIP
    ...                           depends=dense_dependencies(crit, feats, targets))
    >>> print(acc.table())                                                   # doctest: +SKIP
    >>> for f in check_dominance(acc) + check_dead(acc):                     # doctest: +SKIP
    ...     print(f)
"""

from detloss.diagnose.dense import dense_dependencies
from detloss.diagnose.doctor import Doctor, Measurement
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
from detloss.diagnose.gradients import (
    SATURATION_LIMIT,
    GradientAccount,
    gradient_accounting,
    saturation,
    term_grad_norms,
)

__all__ = [
    "SATURATION_LIMIT",
    "Doctor",
    "Finding",
    "GradientAccount",
    "Measurement",
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
    "term_grad_norms",
    "term_names",
]
