"""How term weights change during training: schedules (warm-ups) and balancers (learned or measured)."""

from detloss.weighting.balancers import Balancer, EmaNormBalancer, GradNormBalancer, UncertaintyBalancer, build_balancer
from detloss.weighting.schedule import WarmupSchedule

__all__ = ["Balancer", "EmaNormBalancer", "GradNormBalancer", "UncertaintyBalancer", "WarmupSchedule", "build_balancer"]
