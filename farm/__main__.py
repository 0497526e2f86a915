"""`farm` and `python -m farm`: the command line, with a stop that lands while it is still
importing (a second or two of torch, diffusers and Hydra) ending as any other stop does."""

import signal
import sys


class _Stopped(KeyboardInterrupt):
    """SIGTERM before farm's own handlers are in place."""


def _stopped(number, frame) -> None:
    raise _Stopped()


def entry() -> None:
    signal.signal(signal.SIGTERM, _stopped)  # until farm.cli.main puts its own in place
    try:
        from farm.cli import entry as command
    except KeyboardInterrupt as e:
        said, code = ("terminated", 143) if isinstance(e, _Stopped) else ("interrupted", 130)
        sys.stderr.write(f"farm: {said}; nothing was done yet: run the same command again to "
                         "resume\n")
        sys.exit(code)
    command()


if __name__ == "__main__":
    entry()
