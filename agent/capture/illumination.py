"""Print and vein frames: one NIR-capable camera under switched light, or two cameras.

With one camera the white LEDs light the print and the 850 nm LEDs the veins; each switch waits
a settle delay (LED rise time, the sensor's exposure in progress) and then drops frames the
camera exposed before the switch, so a print frame never carries vein light or the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.capture.base import Frame, Source
from agent.manifest import MODALITIES

logger = logging.getLogger(__name__)


class Illumination:
    """White and 850 nm LED banks on two GPIO pins, through gpiozero."""

    def __init__(
        self,
        white_pin: int | str,
        nir_pin: int | str,
        settle_s: float = 0.05,
        active_high: bool = True,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import LED

        self.white = LED(white_pin, active_high=active_high, pin_factory=pin_factory)
        self.nir = LED(nir_pin, active_high=active_high, pin_factory=pin_factory)
        self.settle_s = settle_s
        self.current: str | None = None

    def select(self, modality: str | None) -> bool:
        """Light for ``modality`` (None: both off); True when the light changed (and settled)."""
        if modality not in (*MODALITIES, None):
            raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
        if modality == self.current:
            return False
        self.white.value = modality == "print"
        self.nir.value = modality == "vein"
        self.current = modality
        if modality is not None:
            time.sleep(self.settle_s)
        logger.debug("illumination modality=%s", modality)
        return True

    def close(self) -> None:
        self.select(None)
        self.white.close()
        self.nir.close()


class SwitchedLight:
    """One camera; the light (and optionally exposure/gain) is switched per modality."""

    def __init__(
        self,
        source: Source,
        light: Illumination,
        controls: dict[str, dict[str, Any]] | None = None,
        drop_after_switch: int = 1,
    ) -> None:
        self.source, self.light = source, light
        self.controls = controls or {}
        self.drop_after_switch = drop_after_switch
        self._controls_of: str | None = None  # the light whose controls the camera has

    def capture(self, modality: str, timeout: float = 1.0) -> Frame:
        changed = self.light.select(modality)
        # by what the camera has, not by the switch: after a set_controls that failed, the
        # light stayed switched and its frames kept the other light's exposure and gain
        wanted = self.controls.get(modality)
        if wanted and self._controls_of != modality and hasattr(self.source, "set_controls"):
            self._controls_of = None
            self.source.set_controls(wanted)
            self._controls_of = modality
        if changed:
            for _ in range(self.drop_after_switch):
                self.source.read(timeout)
        frame = self.source.read(timeout)
        frame.meta["modality"] = modality
        return frame

    def lit_first(self, modalities: Sequence[str]) -> list[str]:
        """``modalities`` in the order to take them: the one whose light is on first, so that
        a capture of both switches once, not twice (each switch costs the settle delay and a
        dropped frame), since the previous capture left the other light on."""
        return sorted(modalities, key=lambda m: m != self.light.current)

    def capture_set(self, modalities: Sequence[str], timeout: float = 1.0) -> dict[str, Frame]:
        """A frame per modality, taken in :meth:`lit_first` order, in the order asked for."""
        frames = {m: self.capture(m, timeout) for m in self.lit_first(modalities)}
        return {m: frames[m] for m in modalities}

    def close(self) -> None:
        self.light.close()
        self.source.close()


class TwoCameras:
    """A print camera and a vein camera (NIR-filtered, under its own always-on light)."""

    def __init__(self, print_source: Source, vein_source: Source) -> None:
        self.sources = {"print": print_source, "vein": vein_source}

    def capture(self, modality: str, timeout: float = 1.0) -> Frame:
        if modality not in self.sources:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        frame = self.sources[modality].read(timeout)
        frame.meta["modality"] = modality
        return frame

    def capture_set(self, modalities: Sequence[str], timeout: float = 1.0) -> dict[str, Frame]:
        """A frame per modality, in the order asked for."""
        return {m: self.capture(m, timeout) for m in modalities}

    def close(self) -> None:
        for s in self.sources.values():
            s.close()
