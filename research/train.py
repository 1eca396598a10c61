"""Command line for one training run, backed by the pure :func:`train`.

    python -m research.train --config experiments/bptt_default.toml --algo bptt --seed 0 [--set key=value ...]

Writes ``<results>/<experiment>/<algo>/seed_<k>/`` (see :mod:`research.runs`); the experiment's name is the file's
stem. ``--set`` takes dotted keys inside the algorithm's table (``--set lr=1e-3 --set env.backend=gymnasium``).
``--show-config`` prints every field of the algorithm's config with its value and its meaning, as a TOML table that
can be pasted into an experiment file. Bad input (a config value, ``--results``) is one line on stderr and exit code 2.

A run directory that holds a ``checkpoint.pt`` written under the same config (a run that was killed) continues from
it, bit for bit on CPU (see :mod:`research.harness`); one written under another config is ignored with a warning and
overwritten; one that cannot be read is a one-line error naming the file (exit code 2: delete it to start again).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from research.algos import ALGOS, get_algo
from research.config import (
    ConfigError,
    apply_overrides,
    check_output_dir,
    describe_config,
    from_dict,
    load_toml,
)
from research.harness import CheckpointError
from research.runs import RunWriter, run_dir


def resolve_config(algo: str, table: Mapping[str, Any], seed: int | None = None,
                   overrides: Sequence[str] = ()) -> Any:
    """The typed config of ``algo`` from its TOML table, a seed and ``key=value`` overrides."""
    config_cls, _ = get_algo(algo)
    data = apply_overrides(dict(table), overrides)
    if seed is not None:
        data["seed"] = seed
    try:
        return from_dict(config_cls, data, prefix=f"{algo}.")
    except ConfigError as err:
        raise ConfigError(str(err)) from None


def train(config: Any, algo: str, out_dir: str | Path | None = None, experiment: str = "",
          quiet: bool = True, label: str = "") -> dict:
    """Runs one training run; writes the run directory when ``out_dir`` is given (``label``: the name the run is
    reported under, when an experiment's variant table differs from ``algo``). Returns the summary."""
    _, trainer = get_algo(algo)
    writer = RunWriter(out_dir, algo, config, experiment, label) if out_dir is not None else None
    return trainer(config, writer=writer, quiet=quiet)


def experiment_table(path: str | Path, algo: str) -> dict[str, Any]:
    """The algorithm's table of an experiment file (an empty table when the file has none)."""
    data = load_toml(path)
    known = set(ALGOS) | {"experiment"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown table [{key}]; expected [experiment] or one of {list(ALGOS)}")
    return dict(data.get(algo, {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m research.train", description=__doc__.splitlines()[0],
        epilog="Every config field, its default and what it means: python -m research.train --algo NAME --show-config")
    parser.add_argument("--config", type=Path, help="experiment TOML file (default: the algorithm's defaults)")
    parser.add_argument("--algo", required=True, choices=ALGOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (dotted keys for nested tables); repeatable")
    parser.add_argument("--device", help="shorthand for --set device=...")
    parser.add_argument("--results", type=Path, default=Path("results"), help="root of the run directories")
    parser.add_argument("--experiment", help="experiment name (default: the config file's stem, else 'default')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved config, each field with its value and one-line meaning (a TOML "
                             "table for an experiment file), and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    overrides = list(args.overrides) + ([f"device={json.dumps(args.device)}"] if args.device else [])
    try:
        table = experiment_table(args.config, args.algo) if args.config else {}
        config = resolve_config(args.algo, table, args.seed, overrides)
        if not args.show_config:
            check_output_dir(args.results)
    except (ConfigError, ValueError) as err:  # bad input: one line on stderr, no traceback
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    if args.show_config:
        print(describe_config(config, args.algo))
        return 0
    experiment = args.experiment or (args.config.stem if args.config else "default")
    out = run_dir(args.results, experiment, args.algo, config.seed)
    try:
        summary = train(config, args.algo, out, experiment, quiet=args.quiet)
    except CheckpointError as err:  # an unreadable checkpoint.pt: one line naming it
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(json.dumps({"run_dir": str(out), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
