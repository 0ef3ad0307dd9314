"""Upstream connections (MQTT, XMPP) behind one interface (see ``gateway.upstreams.base``)."""
