"""`farm` and `python -m farm`: the command line, with a stop that lands while it is still
importing (a second or two of torch, diffusers and Hydra) ending as any other stop does."""

import signal
import sys


def entry() -> None:
    # 1. a Ctrl-C or SIGTERM during the imports is noted, not raised: raised, it could land in
    #    a callback whose exceptions Python ignores (an at-fork handler), and be lost
    stops: list[int] = []
    kept = {number: signal.signal(number, lambda number, frame: stops.append(number))
            for number in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(number) in (signal.default_int_handler, signal.SIG_DFL)}
    from farm import run
    from farm.cli import entry as command

    # 2. farm's own handlers (farm.cli.main sets SIGTERM's again), then any stop noted
    for number, handler in kept.items():
        signal.signal(number, run.terminate if number == signal.SIGTERM else handler)
    if stops:
        said, code = ("terminated", 143) if stops[0] == signal.SIGTERM else ("interrupted", 130)
        sys.stderr.write(f"farm: {said}; nothing was done yet: run the same command again to "
                         "resume\n")
        sys.exit(code)
    command()


if __name__ == "__main__":
    entry()
