"""The ``lgesynth`` command line (python-fire).

Commands: ``phantom``, ``import-emidec``, ``import-masks``, ``check-data``, ``stats``, ``experiment``, ``pipeline``, ``compare``, ``pack``.
Each is a thin wrapper over a function in the library, so everything here is also callable from
Python and from bundle configs.
"""

from __future__ import annotations

import sys


def _commands() -> dict:
    from lgesynth import commands

    return {
        "phantom": commands.phantom,
        # fire also accepts the hyphenated spelling: `lgesynth import-emidec`
        "import_emidec": commands.import_emidec,
        "import_masks": commands.import_masks,
        "check_data": commands.check_data,
        "stats": commands.stats,
        "experiment": commands.experiment,
        "pipeline": commands.pipeline,
        "compare": commands.compare,
        "pack": commands.pack,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lgesynth`` console script."""
    import fire

    from lgesynth.errors import DataError

    try:
        fire.Fire(_commands(), command=argv, name="lgesynth")
    except DataError as exc:
        print(f"lgesynth: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
