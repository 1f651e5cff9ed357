"""Difficulty levels: how much one capture of a hand may differ from another capture of it.

Every length is given for a 128-pixel ROI (pixels) or as a fraction of the ROI side, and the
renderer scales it with the ROI size, so a 256-pixel rendering is the same capture, sharper.
A pair ``(lo, hi)`` is a uniform range drawn per capture; a single number ``m`` is a symmetric
range ``[-m, m]``. docs/synth.md lists the levels as a table and shows a contact sheet of each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

Range = tuple[float, float]


@dataclass(frozen=True)
class Level:
    name: str
    # how distinct hands are: scales the between-identity spread of the principal creases
    identity_spread: float
    # shared geometry (one pose per capture, applied to print and vein alike)
    rotation_deg: float
    shift_frac: float
    scale_frac: float
    elastic_px: Range
    # per-capture changes of the print pattern
    crease_jitter_frac: float  # principal-crease control points, fraction of the ROI side
    secondary_drop: float  # probability that a secondary crease is not visible
    width_jitter: float  # relative line width change
    darkness_jitter: float  # relative line darkness change
    # per-capture changes of the vein pattern
    vein_drop: float  # probability that a thin terminal branch is not visible
    vein_jitter_frac: float  # smooth shift of the vessels under the skin, fraction of the ROI
    vein_contrast: Range
    vein_blur: Range  # scattering blur, Gaussian sigma in pixels
    # per-modality photometry
    print_blur: Range
    noise: Range  # sensor noise sigma, grey levels
    gain: float  # relative
    offset: float  # grey levels
    illumination: Range  # brightness change across the ROI (relative), random direction
    vignetting: Range  # relative darkening at the corners
    jpeg_quality: Range

    def to_dict(self) -> dict:
        return asdict(self)


MEDIUM = Level(
    name="medium",
    identity_spread=0.85,
    rotation_deg=4.5,
    shift_frac=0.04,
    scale_frac=0.05,
    elastic_px=(0.5, 2.0),
    crease_jitter_frac=0.03,
    secondary_drop=0.15,
    width_jitter=0.2,
    darkness_jitter=0.25,
    vein_drop=0.4,
    vein_jitter_frac=0.03,
    vein_contrast=(0.12, 0.30),
    vein_blur=(1.0, 3.5),
    print_blur=(0.3, 1.2),
    noise=(1.0, 5.0),
    gain=0.15,
    offset=12.0,
    illumination=(0.03, 0.22),
    vignetting=(0.05, 0.25),
    jpeg_quality=(60, 92),
)

EASY = replace(
    MEDIUM,
    name="easy",
    identity_spread=1.0,
    rotation_deg=2.0,
    shift_frac=0.02,
    scale_frac=0.02,
    elastic_px=(0.0, 0.8),
    crease_jitter_frac=0.012,
    secondary_drop=0.05,
    width_jitter=0.1,
    darkness_jitter=0.1,
    vein_drop=0.05,
    vein_jitter_frac=0.012,
    vein_contrast=(0.22, 0.40),
    vein_blur=(0.8, 2.0),
    print_blur=(0.2, 0.6),
    noise=(0.5, 2.0),
    gain=0.08,
    offset=6.0,
    illumination=(0.02, 0.12),
    vignetting=(0.02, 0.12),
    jpeg_quality=(85, 95),
)

HARD = replace(
    MEDIUM,
    name="hard",
    identity_spread=0.7,
    rotation_deg=9.0,
    shift_frac=0.08,
    scale_frac=0.08,
    elastic_px=(1.0, 3.0),
    crease_jitter_frac=0.06,
    secondary_drop=0.3,
    width_jitter=0.3,
    darkness_jitter=0.4,
    vein_drop=0.5,
    vein_jitter_frac=0.06,
    vein_contrast=(0.08, 0.22),
    vein_blur=(1.5, 4.5),
    print_blur=(0.5, 1.8),
    noise=(2.0, 8.0),
    gain=0.25,
    offset=20.0,
    illumination=(0.1, 0.45),
    vignetting=(0.1, 0.4),
    jpeg_quality=(40, 80),
)

LEVELS: dict[str, Level] = {lv.name: lv for lv in (EASY, MEDIUM, HARD)}


def get_level(level: str | Level) -> Level:
    """A level by name, or the given :class:`Level` itself (tests and benches tune their own)."""
    if isinstance(level, Level):
        return level
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(
            f"unknown synthetic difficulty level {level!r}: use one of {', '.join(LEVELS)}"
        ) from None
