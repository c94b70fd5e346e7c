"""Experiments: learning checks, demos and micro-benchmarks that the notebooks and the CLI call.

They are not library code: each module is a script-like recipe built on `arftlib`'s pieces, with a docstring
that says what it measures and how to run it. Measured results live in the notebooks' run folders, the README
tables and the run files these write — not in docstrings.
"""
