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


def add_threads_option(parser) -> None:
    parser.add_argument(
        "--threads",
        default="auto",
        metavar="N|auto",
        help="CPU threads: a number, or auto (default): as many as the cores other processes leave free, "
        "re-checked while tracking; OMP_NUM_THREADS, when set, fixes it",
    )


def add_device_options(parser) -> None:
    """--device and --precision, for the commands that run the network on one (track, serve)."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),  # engine.tracker.PRECISIONS (torch not imported here)
        help="network arithmetic: auto = the encoder in bfloat16 on a CUDA GPU and on a CPU that "
        "has it natively, float32 elsewhere; fp32: exact everywhere; int8 (CPU): the mixer in int8 too "
        "(faster, docs/performance.md)",
    )


def resolve_threads(value: str) -> int | str:
    """--threads: 'auto' (OMP_NUM_THREADS fixes it when set) or a positive number."""
    import os

    if value == "auto":
        pinned = os.environ.get("OMP_NUM_THREADS", "").strip()
        return int(pinned) if pinned.isdigit() and int(pinned) > 0 else "auto"
    if not value.isdigit() or int(value) < 1:
        raise CliError(f"--threads must be a positive number or auto, got {value!r}")
    return int(value)


def check_writable(path, what: str = "output") -> None:
    """Refuses now, before any work, an output the run could not write at its end: a path under
    a regular file, an existing folder where a file goes, or a folder without write access."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir() and path.suffix:
        raise CliError(f"cannot write the {what} {path}: it is a folder")
    parent = path.parent if path.suffix or not path.is_dir() else path
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CliError(f"cannot write the {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CliError(f"cannot write the {what} {path}: no write permission in {probe}")
