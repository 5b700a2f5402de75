"""Turn distribution's access log (stdin) into JSON request lines (file argument).

distribution writes one Apache "combined" line per request to stdout, for every
status (its JSON app log only reports 2xx/3xx as "response completed"). Those
lines carry one-second timestamps, too coarse to order them against the token
and CDN logs, so this process stamps each line with the time it arrives; the
registry writes it as soon as the response is done.

Run: docker-registry serve CONFIG | python stamplog.py OUT.jsonl HOST
"""

from __future__ import annotations

import json
import re
import sys
import time

# 127.0.0.1 - - [12/May/2026:10:00:00 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "skopeo/1.9.3"
LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


def main() -> None:
    out_path, host = sys.argv[1], sys.argv[2]
    with open(out_path, "a", buffering=1) as out:
        for raw in sys.stdin.buffer:
            t = time.time()
            text = raw.decode("utf-8", "replace").rstrip("\n")
            m = LINE.match(text)
            if not m:
                continue  # not an access-log line
            rec = {
                "t": t, "host": host, "method": m[1], "path": m[2],
                "status": int(m[3]), "bytes": 0 if m[4] == "-" else int(m[4]),
            }
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
