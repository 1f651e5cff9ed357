"""Synthetic palms: paired print and vein ROIs of made-up hands, in the real data sets' layouts.

The in-memory API (make_identity, render_capture, generate_arrays) serves training tests,
benchmarks and the full-hand renderer; write_dataset writes the layouts the loaders read.
"""

from export.synth.dataset import generate_arrays, write_dataset
from export.synth.identity import Identity, make_identity
from export.synth.levels import LEVELS, Level, get_level
from export.synth.render import Capture, pose_matrix, render_capture

__all__ = [
    "LEVELS",
    "Capture",
    "Identity",
    "Level",
    "generate_arrays",
    "get_level",
    "make_identity",
    "pose_matrix",
    "render_capture",
    "write_dataset",
]
