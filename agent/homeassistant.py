"""Home Assistant MQTT discovery: the decision as an ``event`` entity of one device.

Home Assistant builds the entity from a retained config message; the daemon publishes it at
each connect and again when Home Assistant announces itself online (``<prefix>/status``), so
an entity deleted by hand or a Home Assistant started after the device comes back.
"""

from __future__ import annotations

from typing import Any

EVENT_TYPES = ["granted", "denied", "unknown", "error"]


def decision_entity(
    prefix: str, device_id: str, device_name: str, version: str, topics: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """(config topic, config document) of the decision event entity; ``topics`` are the
    device's own (``decision``, ``availability``)."""
    doc = {
        "name": "Palm decision",
        "unique_id": f"{device_id}_decision",
        "object_id": f"{device_id}_decision",
        "state_topic": topics["decision"],
        "event_types": EVENT_TYPES,
        "value_template": (
            "{{ {'event_type': value_json.decision, 'subject': value_json.subject, "
            "'mode': value_json.mode} | tojson }}"
        ),
        "availability": [
            {
                "topic": topics["availability"],
                "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
            }
        ],
        "device": {
            "identifiers": [f"palm-agent-{device_id}"],
            "name": device_name,
            "manufacturer": "palm-cohash",
            "model": "palm-agent",
            "sw_version": version,
        },
    }
    return f"{prefix}/event/{device_id}/decision/config", doc
