"""How term weights change during training: schedules (warm-ups), balancers (learned or measured), and the
:class:`WeightPolicy` that combines them into each step's gains."""

from detloss.weighting.balancers import Balancer, EmaNormBalancer, GradNormBalancer, UncertaintyBalancer, build_balancer
from detloss.weighting.policy import WeightPolicy
from detloss.weighting.schedule import WarmupSchedule

__all__ = [
    "Balancer",
    "EmaNormBalancer",
    "GradNormBalancer",
    "UncertaintyBalancer",
    "WarmupSchedule",
    "WeightPolicy",
    "build_balancer",
]
