"""The bridge between device drivers and upstreams, one job per module.

* ``assembly``: ``Bridge``, the drivers' ``DeviceSink``; opens the stores, starts the parts;
* ``directory``: which driver owns which device;
* ``pump``: the outbox drained to each upstream, delivered on the server's ack;
* ``router``: commands in (validation, lifecycle, routing to drivers);
* ``results``: results out, final ones published once with bounded retries;
* ``controls``: the console's and web page's commands, radio settings and log level;
* ``home_assistant``: discovery, availability and health over the MQTT extras;
* ``feeds``: what the console, metrics and web page read.
"""

from gateway.bridge.assembly import Bridge
from gateway.bridge.controls import LocalControls
from gateway.bridge.directory import DriverDirectory

__all__ = ["Bridge", "DriverDirectory", "LocalControls"]
