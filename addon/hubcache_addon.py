"""Entry point for plain mitmdump: `mitmdump -s addon/hubcache_addon.py`."""

from hubcache.hooks.addon import HubCache

addons = [HubCache()]
