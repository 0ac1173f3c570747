"""distracer: distributed actor-learner training of pixel-based CarRacing-v3 agents on Ray."""

__version__ = "0.1.0"
