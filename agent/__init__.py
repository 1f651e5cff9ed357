"""palm-cohash device side: capture, ROI, quality, inference, matching, store, MQTT daemon.

Imports neither torch nor tensorflow nor anything under ``export``.
"""

__version__ = "0.1.0"
