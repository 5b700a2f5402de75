"""The Docker-Hub-shaped world that the end-to-end tests and the tools (scripts/bench.py,
scripts/pull_budget.py) both run hubcache in: the upstream in a network namespace (hubenv, with
the real distribution registry behind hubfront, tokenserver and cdnserver), the proxy launcher
(proxy), registry clients and container engines (clients, engines), test images (images) and
the load generator (loadgen).

It lives beside the scripts, not in tests/, so that a tool imports it as a sibling package (the
script's own folder is on sys.path); pytest finds it through `pythonpath` in pyproject.toml.
hubfront, tokenserver, cdnserver and stamplog run as scripts of their own (hubenv starts them by
path), so they import httpsd as a sibling module.
"""
