"""Pure Matrix rules: plain data in, plain data out; no I/O and no asyncio.

Keeping these free of storage and networking lets the rules be tested in isolation
and reasoned about against the spec text alone.
"""
