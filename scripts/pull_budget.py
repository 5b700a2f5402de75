"""N CI-style pipelines pull the same two tags through hubcache (tag TTL 0: every pull asks
upstream with a free HEAD) while one tag moves every few pipelines; prints how many counted pulls
(manifest GETs) reached the Docker-Hub-like upstream, per pool account, against the pulls made."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness import budgetdemo
from harness.clients import make_cert_dir
from harness.hubenv import Upstream, missing_prerequisites
from harness.proxy import Proxy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pipelines", type=int, default=20)
    ap.add_argument("--move-every", type=int, default=5, help="the app tag moves every this many pipelines")
    args = ap.parse_args()
    if why := missing_prerequisites():
        print(f"pull-budget: cannot run: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hubcache-budget-"))
    pool = {"alice": "alice-pw", "bob": "bob-pw"}
    up = Upstream(work / "upstream", accounts={"pusher": "pushpass", **pool},
                  limits={"alice": 200, "bob": 200, "anonymous": 100, "pusher": None})
    up.start()
    hub = None
    try:
        from mitmproxy.certs import CertStore

        CertStore.from_store(work / "confdir", "mitmproxy", 2048)
        certs = make_cert_dir(work / "certs", up.ca_cert, work / "confdir" / "mitmproxy-ca-cert.pem")
        creds = budgetdemo.write_credentials(work / "hub.toml", pool)
        hub = Proxy(work / "hub", up.ca_cert, confdir=work / "confdir",
                    sets=[f"hubcache_credentials={creds}", "hubcache_tag_ttl=0"]).start()
        result = budgetdemo.run(up, hub, certs, work / "pulls", args.pipelines, args.move_every)
    finally:
        if hub:
            hub.stop()
        up.stop()
    print(result.line())
    print(json.dumps({"pipelines": result.pipelines, "pulls": result.pulls, "tag_changes": result.tag_changes,
                      "counted_pulls": result.spent, "by_account": result.counted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
