"""The rehearsal's replay in one process (docs/rehearsal.md): orders_watcher,
risk_detector, preferences and outreach decide with their own handlers on one event
clock, with their state in memory and no broker between them.

A composition root, like the simulator and the benchmarks: it is the one package that
imports the four services (their handlers and outreach's bootstrap), as each service's
own entrypoints do; no service imports it. `outreachctl rehearse` runs it
(`python -m replay`)."""
