"""The `csmlab` command: `doctor`, `bench codec|moshi|csm`, `train-codec`."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from csmlab.bench import BENCHES, machine


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"csmlab.bench.{args.what}")
    figures = module.run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(), **figures}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from csmlab.doctor import report

    print(report())
    return 0


def _train_codec(args: argparse.Namespace) -> int:
    from csmlab.train import train_codec_cli

    return train_codec_cli(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csmlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="platform, hardware, versions and which weights each model will use").set_defaults(
        func=_doctor
    )
    bench = sub.add_parser("bench", help="measure latency and throughput").add_subparsers(dest="what", required=True)
    for what in BENCHES:
        module = importlib.import_module(f"csmlab.bench.{what}")
        p = bench.add_parser(what, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", metavar="PATH", help="also write the figures and the machine description as JSON")
        module.add_arguments(p)
        p.set_defaults(func=_bench)
    train = sub.add_parser("train-codec", help="train the small offline Mimi on synthetic speech")
    importlib.import_module("csmlab.train").add_arguments(train)
    train.set_defaults(func=_train_codec)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
