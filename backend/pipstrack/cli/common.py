"""What every command shares: its error type, exit codes and progress bar."""

from __future__ import annotations

EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def progress_bar(desc: str, unit: str):
    """A tqdm bar on a terminal; silent when stderr is piped."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=True)

    def update(done, total):
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update
