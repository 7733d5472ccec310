"""The whole-system fault suite: the four services as processes on a real broker, the
ledger and preferences on PostgreSQL, the official SDKs against provider doubles that
inject faults, and a checker that judges only outside effects (what the doubles
accepted, what is on the topics, what is in the stores).

`make chaos` runs the whole matrix and prints its table (`python -m tests.chaos`);
tests/chaos/test_chaos.py runs a representative subset in `make test`. See
docs/reliability.md.
"""
