"""An aiohttp application served on the event loop: how the status page binds, reports its port
and stops (the metrics endpoint needs no framework: ``gateway.plain_http``)."""

from __future__ import annotations

from aiohttp import web

AIOHTTP_SHUTDOWN_TIMEOUT_S = 60.0  # aiohttp's own default: how long stop() lets requests finish


class HttpService:
    """Serves one application on ``host:port`` (port 0 picks a free port; see ``port``)."""

    def __init__(
        self, host: str, port: int, *, shutdown_timeout_s: float = AIOHTTP_SHUTDOWN_TIMEOUT_S
    ) -> None:
        self.host = host
        self._requested_port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, app: web.Application) -> int:
        """Serve ``app``; return the bound port. OSError if the address cannot be bound."""
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout_s
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
