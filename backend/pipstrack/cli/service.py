"""``pipstrack serve``, ``ping`` and ``keys``: the tracking service."""

from __future__ import annotations

import logging

from .common import EXIT_FAILURE, CliError, add_device_options, add_threads_option, resolve_threads


def cmd_serve(args) -> int:
    """Loads the model once and serves jobs until SIGINT/SIGTERM (pipstrack.service.server)."""
    from ..engine.weights import load_model
    from ..service.server import ServiceError, serve

    logging.getLogger("pipstrack").setLevel(args.log_level.upper())
    model = load_model(args.model)
    try:
        serve(
            model,
            bind=args.bind,
            device=args.device,
            keys_dir=args.keys,
            insecure=args.insecure,
            threads=resolve_threads(args.threads),
            precision=args.precision,
            allow_roots=args.allow_root or (),
            job_memory_mb=args.job_memory_mb,
            memory_mb=args.memory_mb,
        )
    except ServiceError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_ping(args) -> int:
    """Exit 0 when a server answers (and prints what it runs), 1 otherwise."""
    from ..wire.client import TrackingError, ping

    try:
        h = ping(args.address, timeout=args.timeout, keys_dir=args.keys)
    except TrackingError as e:
        print(f"{args.address}: no usable answer ({e})")
        return EXIT_FAILURE
    except ValueError as e:  # not an address, a keys folder without keys
        raise CliError(str(e)) from None
    print(
        f"{args.address}: pipstrack {h.get('server')}, protocol {h.get('protocol')}, "
        f"model {h.get('model')}, device {h.get('device')}" + (f" ({h['torch']})" if h.get("torch") else "")
    )
    return 0


def cmd_keys(args) -> int:
    """Makes the server key pair (once) and a client key pair that the server allows."""
    from ..service.server import ServiceError, make_keys

    try:
        made = make_keys(args.dir, args.name)
    except ServiceError as e:
        raise CliError(str(e)) from None
    for what, path in made.items():
        print(f"made {what} key pair: {path}")
    print(f"server: pipstrack serve --bind tcp://0.0.0.0:5555 --keys {args.dir}")
    print(f"client machine: copy {args.name}.key_secret and server.key (never server.key_secret) into its keys folder")
    return 0


def add_parsers(sub) -> None:
    sv = sub.add_parser("serve", help="run the tracking service (ZeroMQ) for the Blender add-on and scripts")
    add_threads_option(sv)
    sv.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    add_device_options(sv)
    sv.add_argument("--model", default=None, help="weights file, 'default' or 'official'")
    sv.add_argument(
        "--keys", metavar="DIR", default=None, help="CurveZMQ keys from `pipstrack keys DIR` (required off loopback)"
    )
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without encryption")
    sv.add_argument(
        "--allow-root",
        metavar="DIR",
        action="append",
        help="folder whose files `paths` and movie jobs may read (repeatable; default: any regular file)",
    )
    sv.add_argument("--job-memory-mb", type=float, default=None, help="one job's frame memory (default 4096)")
    sv.add_argument("--memory-mb", type=float, default=None, help="all jobs' frame memory together (default 8192)")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sv.set_defaults(func=cmd_serve)

    pg = sub.add_parser("ping", help="ask a tracking service for its version, model and device")
    pg.add_argument("address", help="e.g. tcp://127.0.0.1:5555")
    pg.add_argument("--timeout", type=float, default=3.0)
    pg.add_argument("--keys", metavar="DIR", default=None, help="CurveZMQ keys folder (client.key_secret, server.key)")
    pg.set_defaults(func=cmd_ping)

    ky = sub.add_parser("keys", help="make CurveZMQ key pairs for a service reachable from other machines")
    ky.add_argument("dir", help="folder for server.key*, NAME.key* and authorized_clients/")
    ky.add_argument("--name", default="client", help="client key name (default client)")
    ky.set_defaults(func=cmd_keys)
