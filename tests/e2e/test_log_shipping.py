"""The README's log shipping example, tried as an operator would: hubcache with JSON logs writing
to journald, rsyslog with the shipped scripts/logging/60-hubcache-elasticsearch.conf, and an
Elasticsearch bulk endpoint. Every line of a pull arrives as one document with hubcache's fields."""

from __future__ import annotations

import json
import time

import pytest

from harness.clients import pull_ok
from harness.logship import LogPipeline

pytestmark = pytest.mark.e2e


def test_json_logs_go_from_journald_to_elasticsearch_one_document_per_line(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/shipped", "1", [(200_000, 4242)])
    pipeline = LogPipeline(tmp_path).start()
    try:
        # as the unit runs it: stdout to the journal under the identifier "hubcache"
        hub = start_hubcache("hubcache_log_format=json", wrap=["systemd-cat", "-t", "hubcache"])
        pull_ok("docker.io/library/shipped:1", tmp_path / "pulled", hub, certs)
        hub.stop()
        assert pipeline.sink
        docs = pipeline.sink.wait_for(lambda d: d.get("event") == "stop")
        journal = [json.loads(line) for line in pipeline.journal_lines("hubcache")]  # journalctl -o cat | jq
    finally:
        pipeline.stop()
    assert len(docs) == len(journal)  # every line, once
    today = time.strftime("hubcache-%Y.%m.%d", time.gmtime())
    assert {index for index, _ in docs} == {today}
    by_event = {}
    for _, d in docs:
        by_event.setdefault(d["event"], []).append(d)
        assert {"time", "level", "event", "message", "host"} <= d.keys()
    assert {"start", "store_opened", "request", "blob_stored", "stop"} <= by_event.keys()
    pulled = {d["reference"]: d for d in by_event["request"] if d["repository"] == "library/shipped"}
    assert pulled["1"]["outcome"] == "miss" and pulled["1"]["status"] == 200
    for layer in img.layer_digests:
        assert pulled[layer]["outcome"] == "miss" and pulled[layer]["client"].startswith("127.0.0.1:")
