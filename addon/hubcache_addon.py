"""Entry point for plain mitmdump: `mitmdump -s addon/hubcache_addon.py`."""

from hubcache.addon import HubCache

addons = [HubCache()]
