from tests.conftest import mosquitto, prosody  # noqa: F401  (shared fixtures)
