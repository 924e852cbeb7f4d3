"""The `csmlab` command: `doctor`, `bench codec|moshi|csm|soak|duplex|gpu|overload|live`, `train-codec`, `serve`.

Subcommands import their module only when chosen, so `csmlab doctor` starts fast and each
benchmark owns its options (`csmlab bench codec --help`).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from csmlab.bench import BENCHES, machine


def _sub_parser(module, prog: str) -> argparse.ArgumentParser:
    doc = (module.__doc__ or "").strip()
    return argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0] if doc else None)


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"csmlab.bench.{args.what}")
    parser = _sub_parser(module, f"csmlab bench {args.what}")
    parser.add_argument("--json", metavar="PATH", help="also write the figures and the machine description as JSON")
    module.add_arguments(parser)
    opts = parser.parse_args(args.rest)
    opts.command = f"csmlab bench {args.what} {' '.join(args.rest)}".strip()
    figures = module.run(opts)
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        stamp = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": opts.command}
        Path(opts.json).write_text(json.dumps({**stamp, **figures}, indent=2, default=str))
        print(f"wrote {opts.json}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from csmlab.doctor import report

    print(report(), flush=True)
    if args.bench:
        from csmlab.bench import realtime
        from csmlab.errors import CsmlabError

        try:
            print("\n".join(realtime.report_lines(realtime.measured(threads=args.threads))))
        except CsmlabError as err:  # e.g. the real call not fetched yet: the rest of the report still stands
            print(f"real time here: not measured ({err})")
    return 0


def _train_codec(args: argparse.Namespace) -> int:
    from csmlab.course.train import train_codec_cli

    return train_codec_cli(args.rest)


def _serve(args: argparse.Namespace) -> int:
    from csmlab.errors import ConfigError
    from csmlab.serve import load_settings, run

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "rest", "config")}
    try:
        settings = load_settings(args.config, **flags)
    except ConfigError as err:  # a setting the user can fix: say which, in one line, no traceback
        print(f"csmlab serve: {err}", file=sys.stderr)
        return 2
    return run(settings)


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="serve a brain over Moshi's websocket protocol (csmlab serve --help)")
    serve.add_argument("--config", metavar="TOML", help="settings file (commented example: deploy/csmlab.toml)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; beyond loopback needs a token)")
    serve.add_argument("--port", type=int, help="port (default 8998, moshi's)")
    serve.add_argument("--brain", help="loopback | moshi | cascade | moshi+csm | scripted")
    serve.add_argument("--weights", help="checkpoint path for the brain (default: csmlab.weights resolves it)")
    serve.add_argument("--listen", action="store_true", default=None,
                       help="offline: decode with the small trained Mimi, so the audio follows the speech")
    serve.add_argument("--device", help="cpu or cuda")
    serve.add_argument("--threads", type=int, help="torch threads (one setting for the process)")
    serve.add_argument("--batch", action="store_true", default=None,
                       help="step all sessions together: one Moshi and one Mimi forward per 80 ms (moshi, loopback)")
    serve.add_argument("--overload", help="when a brain cannot keep up: skip (concealed frames' compute; default), "
                       "rate (run it at a declared lower rate) or none")
    serve.add_argument("--max-sessions", type=int, dest="max_sessions")
    serve.add_argument("--max-session-s", type=float, dest="max_session_s", help="session length limit, seconds")
    serve.add_argument("--max-message-bytes", type=int, dest="max_message_bytes")
    serve.add_argument("--idle-timeout-s", type=float, dest="idle_timeout_s")
    serve.add_argument("--token", help="access token (prefer the CSMLAB_TOKEN environment variable)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow a non-loopback bind without a token (behind a trusted proxy only)")
    serve.add_argument("--allow-origin", action="append", dest="allowed_origins", metavar="ORIGIN",
                       help="a web origin whose pages may use the server (repeatable; * for any)")
    serve.add_argument("--allow-host", action="append", dest="allowed_hosts", metavar="NAME",
                       help="a Host name to answer besides loopback's (repeatable; behind a proxy, its public name)")
    serve.add_argument("--header-timeout-s", type=float, dest="header_timeout_s",
                       help="close a connection with no request in progress after this long (slowloris)")
    serve.add_argument("--max-connections-per-client", type=int, dest="max_connections_per_client")
    serve.set_defaults(func=_serve, rest=[])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="platform, hardware, versions, which weights each model will use, "
                                           "and which brains keep real time here (a short bench, cached)")
    doctor.add_argument("--no-bench", dest="bench", action="store_false",
                        help="skip the real-time bench (it takes seconds the first time on a host, then is cached)")
    doctor.add_argument("--threads", type=int, default=1, help="torch threads for the bench (default 1, as the notebooks)")
    doctor.set_defaults(func=_doctor, rest=[])
    bench = sub.add_parser("bench", help="measure latency and throughput (csmlab bench WHAT --help)")
    bench.add_argument("what", choices=BENCHES)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    bench.set_defaults(func=_bench)
    train = sub.add_parser("train-codec", help="train the small offline Mimi (csmlab train-codec --help)", add_help=False)
    train.set_defaults(func=_train_codec, rest=[])  # its own parser reads the options, --help included
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _train_codec:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.rest += unknown
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
