"""The `hubcache` command: `hubcache run` starts the proxy in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from hubcache import __version__, logs, worker
from hubcache.settings import DEFAULT_HOME
from hubcache.tools import fdlimit, preflight, storecmds


def _workers(value: str) -> int:
    n = int(value) if value.isdigit() else 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of processes from 1 to 64")
    return n


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
    run.add_argument("--workers", type=_workers, default=1, metavar="N",
                     help="proxy processes sharing the port and the store (default 1; a central cache: its cores)")
    run.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="OPTION=VALUE",
        help="any mitmproxy or hubcache option, e.g. ssl_verify_upstream_trusted_ca=FILE (repeatable)",
    )
    hist = sub.add_parser("history", help="show every recorded tag -> digest change of an image")
    hist.add_argument("image", help="e.g. postgres:12.2, or postgres for all its tags")
    hist.add_argument("--store", default=os.path.join(DEFAULT_HOME, "store"), help="LMDB store directory")
    ver = sub.add_parser("verify", help="re-hash the whole store and drop what does not match (proxy stopped)")
    ver.add_argument("--store", default=os.path.join(DEFAULT_HOME, "store"), help="LMDB store directory")
    storecmds.add_arguments(sub)  # stats, ls, evict
    from hubcache.tools.archive import add_export, add_import
    add_export(sub.add_parser("export", help="write images of the store to an OCI image layout archive (tar)"))
    add_import(sub.add_parser("import", help="read an archive `hubcache export` wrote into the store"))
    from hubcache.tools.doctor import add_arguments as doctor_arguments
    doctor_arguments(sub.add_parser("doctor", help="check, on a runner host, that pulls go through hubcache"))
    from hubcache.tools.htpasswd import add_arguments as htpasswd_arguments
    htpasswd_arguments(sub.add_parser("htpasswd", help="add or replace a proxy login in the htpasswd file of proxyauth=@FILE"))
    from hubcache.tools.warm import add_arguments as warm_arguments
    warm_arguments(sub.add_parser("warm", help="pull through the running proxy every image a .gitlab-ci.yml, a list or a name gives"))
    from hubcache.tools.ca import add_arguments as ca_arguments
    ca_arguments(sub.add_parser("ca", help="show or renew hubcache's CA (it may vouch for registry hosts only)"))
    return p


def _history(args: argparse.Namespace) -> int:
    from hubcache.decide.routes import parse_reference
    from hubcache.registries import image_name

    try:
        repository, tag = parse_reference(args.image)
        store = preflight.open_existing(args.store, readonly=True)
    except ValueError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_USAGE
    except preflight.Problem as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return e.code
    try:
        rows = store.tag_history(repository, tag)
    finally:
        store.close()
    if not rows:
        print(f"hubcache: no recorded tag changes for {args.image}", file=sys.stderr)
        return preflight.EXIT_PROBLEM
    for name, when, media_type, digest in rows:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        print(f"{stamp}  {image_name(repository)}:{name}  " + (f"{digest}  {media_type}" if digest else "(deleted)"))
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        store = preflight.open_existing(args.store)
    except preflight.Problem as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return e.code
    try:
        r = store.verify()
    finally:
        store.close()
    print(f"verified {r['manifests']} manifests and {r['blobs']} blobs: {r['bad']} did not match their digest "
          f"and were dropped; {store.recovered} interrupted writes and {r['orphan_chunks']} orphaned chunk sets removed")
    return 0


async def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from hubcache.hooks.addon import HubCache

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
        return preflight.EXIT_USAGE
    from hubcache.hooks.access import refusal
    if why := refusal(opts):  # an open proxy, or a login `ps` would show
        print(f"hubcache: {why}", file=sys.stderr)
        return preflight.EXIT_USAGE
    me = worker.role()
    if (code := _preflight(args, opts, me)) is not None:
        return code
    if args.workers > 1 and not me.shared:
        from hubcache.tools.workers import become_supervisor

        _started(opts, args.confdir, args.workers)
        become_supervisor(args.workers, argv, opts.hubcache_store, opts.hubcache_max_size, opts.hubcache_log_format,
                          opts.hubcache_log_level)
    if me.shared:
        _share_port()
    fds, needed = fdlimit.raise_soft_limit(me.share_of(opts.hubcache_client_max))
    if why := fdlimit.advice(fds, needed):
        logs.event(logging.getLogger(__name__), logging.WARNING, "fd_limit_low", why, limit=fds, needed=needed)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if not me.shared:
        _started(opts, args.confdir, 1)
    try:
        await master.run()
    except exceptions.OptionsError as e:  # the store could not open after all (taken meanwhile)
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_STORE_UNUSABLE
    return 0


def _preflight(args: argparse.Namespace, opts: Any, me: worker.Role) -> int | None:
    """What `run` checks before mitmproxy starts; the exit status of a problem (told in one line),
    or None. A worker's supervisor checked all of it, holds the store and made the CA."""
    try:
        if not me.shared:
            preflight.check_store(opts.hubcache_store)
            preflight.check_port(opts.listen_host, opts.listen_port)
            if listen := opts.hubcache_metrics_listen:  # host:port, checked by the option already
                host, _, port = listen.rpartition(":")
                preflight.check_port(host or "127.0.0.1", int(port), "hubcache_metrics_listen")
        preflight.check_confdir(args.confdir)
        if not me.shared:
            _ensure_ca(args.confdir, opts)  # before mitmproxy, which would make an unconstrained one
    except preflight.Problem as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return e.code
    return None


def _started(opts: Any, confdir: str, workers: int) -> None:
    ca = os.path.join(confdir, "mitmproxy-ca-cert.pem")
    url = f"http://{opts.listen_host}:{opts.listen_port}"
    logs.event(  # a log line, so that it is JSON too with hubcache_log_format=json
        logging.getLogger(__name__), logging.INFO, "start",
        f"proxy on {url} (hubcache {__version__}), store {opts.hubcache_store}, CA to trust: {ca}"
        + (f", {workers} workers" if workers > 1 else ""),
        version=__version__, proxy=url, store=opts.hubcache_store, ca=ca, workers=workers)


def _share_port() -> None:
    """A worker listens on the proxy's address beside its siblings: SO_REUSEPORT on the socket
    mitmproxy makes (with asyncio.start_server, which takes it as an argument)."""
    start_server = asyncio.start_server

    async def sharing(*args: Any, **kwargs: Any) -> asyncio.Server:
        kwargs.setdefault("reuse_port", True)
        return await start_server(*args, **kwargs)

    asyncio.start_server = sharing


def _ensure_ca(confdir: str, opts: object) -> None:
    from hubcache.settings import Settings, SettingsError
    from hubcache.tools import ca

    try:
        patterns = ca.intercepted(Settings.parse(opts, set()))
        info, made = ca.ensure(confdir, patterns)
    except SettingsError as e:
        raise preflight.Problem(str(e), preflight.EXIT_USAGE) from e
    except (OSError, ValueError) as e:
        raise preflight.Problem(f"--confdir {confdir}: the CA: {e}", preflight.EXIT_USAGE) from e
    log = logging.getLogger(__name__)
    if made:
        names = " ".join(info.names.dns + info.names.ips) if info.names else ""
        logs.event(log, logging.INFO, "ca_created", f"made a CA that may vouch only for {names} (sha256 "
                   f"{info.fingerprint}): give runners {confdir}/{ca.CERT_FILE}", fingerprint=info.fingerprint)
    for problem in ca.problems(info, patterns):
        logs.event(log, logging.WARNING, "ca_problem", problem, fingerprint=info.fingerprint)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logs.install(worker.role().index)
    if args.command == "run":
        logging.getLogger("hubcache").setLevel(logging.INFO)
        return asyncio.run(_run(args, argv))
    if args.command == "history":
        return _history(args)
    if args.command == "verify":
        logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the prefix is logs.install()'s
        return _verify(args)
    if args.command in storecmds.COMMANDS:
        return storecmds.run(args)
    if args.command in ("export", "import"):
        from hubcache.tools.archive import run as archive
        return archive(args)
    if args.command == "doctor":
        from hubcache.tools.doctor import run as doctor
        return doctor(args)
    if args.command == "htpasswd":
        from hubcache.tools.htpasswd import run as htpasswd
        return htpasswd(args)
    if args.command == "ca":
        from hubcache.tools.ca import run as ca
        return ca(args)
    if args.command == "warm":
        from hubcache.tools.warm import run as warm
        return warm(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
