"""``python -m webhook_dispatcher``: settings, logging, run until SIGTERM/SIGINT."""

import asyncio
import signal

from provisio_lib.process import calm_gc, new_event_loop, start, startup_errors_exit

from .app import Dispatcher
from .settings import DispatcherSettings


async def _run(settings: DispatcherSettings) -> None:
    dispatcher = Dispatcher(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.request_stop)
    await dispatcher.run()


def main() -> None:
    settings = start(DispatcherSettings, "webhook-dispatcher")
    calm_gc(None)
    with (
        startup_errors_exit("webhook-dispatcher"),
        asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as runner,
    ):
        runner.run(_run(settings))


if __name__ == "__main__":
    main()
