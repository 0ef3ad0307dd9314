"""What the console's two ends agree on: where the socket is, and how a session looks on it.

The client knows an answer is complete when the prompt follows it, and that the session ended
as asked when the farewell was the last thing printed.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config

PROMPT = "duogate> "
BANNER = "duogate console; type 'help' for commands\n"
# After quit the socket connection is closed; the serial console waits for Enter.
FAREWELL = "bye\n"


def console_socket_path(config: Config) -> Path:
    return config.console.socket or config.gateway.data_dir / "console.sock"
