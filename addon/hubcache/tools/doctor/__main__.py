"""`python -m hubcache.tools.doctor`: the doctor without the `hubcache` command."""

import argparse
import sys

from hubcache.tools.doctor.runner import add_arguments, run

ap = argparse.ArgumentParser(prog="hubcache doctor")
add_arguments(ap)
sys.exit(run(ap.parse_args()))
