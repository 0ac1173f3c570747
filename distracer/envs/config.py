"""Configuration of the shared CarRacing environment layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from distracer.errors import ConfigError

ACTION_SPACES = ("continuous", "discrete")
CHANNEL_ORDERS = ("first", "last")
# The smallest square frame the Nature-CNN encoder accepts: 8x8/4 -> 4x4/2 -> 3x3/1 leaves 1x1 at 36.
MIN_FRAME_SIZE = 36
# Settings that shape training episodes only (scores always come from whole stock episodes), or only how fast
# the same pixels are made: a resumed run may change them.
TRAINING_ONLY_FIELDS = ("fast", "no_progress_frames", "no_progress_penalty", "standstill_frames", "skip_penalty",
                        "lap_end_fraction")


@dataclass
class EnvConfig:
    fast: bool = True
    """Train on distracer/CarRacingFast-v3 (identical observations, faster); evaluation always uses the stock env."""
    action_space: str = "continuous"
    """'continuous': 2-D [steer, accel] with gas=max(accel,0), brake=max(-accel,0); 'discrete': 5 actions."""
    frame_size: int = 84
    """Side of the square observation frame, in pixels."""
    grayscale: bool = True
    """Grayscale frames (one channel each); False keeps RGB (3 channels per stacked frame)."""
    channel_order: str = "first"
    """'first' gives (C, H, W) as the learners take it; 'last' gives (H, W, C) as SB3 CnnPolicy takes it."""
    action_repeat: int = 1
    """Each agent action is applied this many env steps, rewards summed; only the last frame is drawn."""
    frame_stack: int = 4
    """Number of most recent frames stacked into one observation."""
    no_progress_frames: int = 0
    """Training only: end an episode after this many consecutive env frames without reaching a new track tile
    (a stopped or lost car); 0 = never. Evaluation always runs the full stock episode."""
    no_progress_penalty: float = 0.0
    """Training only: reward (<= 0) added to the step that ends an episode for no progress (shaping; reported
    training returns and all scores stay unmodified)."""
    standstill_frames: int = 0
    """Training only: end an episode once the car has stood still (hull speed < 1 m/s) for this many
    consecutive env frames, charging that step -0.1 for every frame the episode had left (the stock return of
    a car that never moves again); 0 = never. Evaluation always runs the full stock episode."""
    skip_penalty: float = 0.0
    """Training only: reward (<= 0) added once the car has left track tiles unvisited behind it (a cut corner, or
    off the road and back further on; charged 4 tiles past the gap, refunded if the gap is visited later): the
    stock episode then cannot end on a finished lap and runs on at -0.1 a frame to frame 1,000 (shaping;
    training returns and all scores stay unmodified); 0 = off. `SkippedTilePenalty`."""

    lap_end_fraction: float = 0.0
    """Training only: end an episode once the car is back across the start line with more than this fraction of
    the tiles visited (CarRacing's own `lap_complete_percent` rule, 0.95, that Gymnasium 1.2.2 never applies:
    issue #1269), rather than drive on to frame 1,000 for the tiles it missed; 0 = off. Evaluation always runs
    the full stock episode. `LapEndTermination`. Measured once (recipe `ppo_lap_end`, seed 1): no gain, since
    most missed tiles are never reached and such a lap never gets back to the line (docs/RESULTS.md)."""

    def validate(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ConfigError(f"env.action_space={self.action_space!r} is unknown; allowed: {', '.join(ACTION_SPACES)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"env.channel_order={self.channel_order!r} is unknown; allowed: first, last")
        if self.frame_size < MIN_FRAME_SIZE:
            raise ConfigError(
                f"env.frame_size={self.frame_size} is too small; the encoders need >= {MIN_FRAME_SIZE}"
            )
        if self.frame_stack < 1:
            raise ConfigError(f"env.frame_stack={self.frame_stack} must be >= 1")
        if self.action_repeat < 1:
            raise ConfigError(f"env.action_repeat={self.action_repeat} must be >= 1")
        if self.no_progress_frames < 0:
            raise ConfigError(f"env.no_progress_frames={self.no_progress_frames} must be >= 0 (0 = off)")
        if self.no_progress_penalty > 0:
            raise ConfigError(
                f"env.no_progress_penalty={self.no_progress_penalty} must be <= 0 (rewarding a stop teaches stopping)"
            )
        if self.no_progress_penalty and not self.no_progress_frames:
            raise ConfigError("env.no_progress_penalty is set but env.no_progress_frames is 0, so it never applies")
        if self.skip_penalty > 0:
            raise ConfigError(f"env.skip_penalty={self.skip_penalty} must be <= 0 (a reward teaches skipping)")
        if not 0.0 <= self.lap_end_fraction < 1.0:
            raise ConfigError(f"env.lap_end_fraction={self.lap_end_fraction} must be in [0, 1) (0 = off)")
        if self.standstill_frames < 0:
            raise ConfigError(f"env.standstill_frames={self.standstill_frames} must be >= 0 (0 = off)")

    def acting_fields(self) -> dict[str, object]:
        """The settings that define what a policy sees and does (spaces, frames, repeat): a checkpoint resumes
        only under the same ones. The training-only rules and the simulator choice may change on resume."""
        return {k: v for k, v in asdict(self).items() if k not in TRAINING_ONLY_FIELDS}

    @property
    def channels(self) -> int:
        """Channels of one stacked observation."""
        return self.frame_stack * (1 if self.grayscale else 3)
