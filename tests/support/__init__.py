"""Test support: a Docker-Hub-shaped upstream (hubenv) and client helpers (clients)."""
