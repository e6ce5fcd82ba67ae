"""Turning one input message into stored events, state and outputs.

`decode` checks the envelope, `pipeline` (worker/pipeline.py) walks one event through
validate → authorize → compute state → store → publish, and `outputs` builds the
messages other services consume.
"""
