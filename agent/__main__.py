"""`python -m agent` and the `convert-agent` command: the command-line interface.

SIGTERM is taken first, before the imports (about half a second): a service manager that stops
the agent while it is still starting gets a clean exit 0, as it does once the agent runs (the
daemon then installs its own handler, which stops the pipeline gracefully)."""

import signal
from types import FrameType


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_while_starting)
    from agent.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
