"""Off-policy replay: fragments from workers, frame-once storage, RAM-budget sizing and the shard actor."""

from distracer.replay.fragment import Fragment, FragmentBuilder
from distracer.replay.sizing import available_memory_bytes, capacity_from_budget, parse_bytes
from distracer.replay.storage import CorruptReplayError, FrameReplay, entry_nbytes

__all__ = [
    "CorruptReplayError",
    "Fragment",
    "FragmentBuilder",
    "FrameReplay",
    "available_memory_bytes",
    "capacity_from_budget",
    "entry_nbytes",
    "parse_bytes",
]
