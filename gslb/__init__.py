"""gslb: a geo-aware global load balancer for LLM inference."""

__version__ = "0.1.0"
