"""Run a Provisio service module on uvloop instead of asyncio's default loop — a bench
experiment (system ``provisio-uvloop`` of bench_scim.py), not how Provisio ships.

    python bench/uvloop_run.py scim_gateway
"""

import asyncio
import runpy
import sys

import uvloop

# aiohttp's run_app and FastStream create their loops through the policy.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
