"""The `hubcache` command: `hubcache run` starts the proxy in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__
from .options import DEFAULT_HOME


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubcache", description="A transparent pull-through cache for Docker Hub.")
    p.add_argument("--version", action="version", version=f"hubcache {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the proxy in the foreground")
    run.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--listen-port", type=int, default=3128, help="port to listen on (default 3128)")
    run.add_argument("--store", default=os.path.join(DEFAULT_HOME, "store"), help="LMDB store directory")
    run.add_argument("--confdir", default=DEFAULT_HOME, help="where the CA lives: <confdir>/mitmproxy-ca-cert.pem")
    run.add_argument("--offline", action="store_true", help="never contact upstream; serve only what the store has")
    run.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="OPTION=VALUE",
        help="any mitmproxy or hubcache option, e.g. ssl_verify_upstream_trusted_ca=FILE (repeatable)",
    )
    return p


async def _run(args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from .addon import HubCache

    opts = options.Options(
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        confdir=args.confdir,
    )
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(HubCache())
    try:
        # Defaults hubcache needs (documented in docs/design.md); --set may still override them.
        opts.update(connection_strategy="lazy", http2=False, stream_large_bodies="1m", tcp_timeout=60,
                    hubcache_store=args.store, hubcache_offline=args.offline)
        opts.set(*args.sets)
    except exceptions.OptionsError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    os.makedirs(args.confdir, exist_ok=True)
    print(
        f"hubcache {__version__}: proxy on http://{args.listen_host}:{args.listen_port}, "
        f"store {args.store}, CA to trust: {os.path.join(args.confdir, 'mitmproxy-ca-cert.pem')}",
        flush=True,
    )
    await master.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        logging.getLogger("hubcache").setLevel(logging.INFO)
        return asyncio.run(_run(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
