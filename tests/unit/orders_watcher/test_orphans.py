"""A shipment read before its order waits `orphan_hold` for it from when it was read. On
the wall clock a backlog record is judged at its partition's earlier time, but its order,
on another topic, can come only after the shipment was read: the hold counts from then.
(The chaos runs under load released such shipments as orphans seconds after reading
them, because the hold counted from their three-day-old partition time.)"""

from __future__ import annotations

from datetime import timedelta

from tests.unit.orders_watcher.timeline import (
    T0,
    DetectionConfig,
    OrdersWatcher,
    Topics,
    message,
    placed,
    shipped,
)

READ = T0 + timedelta(days=3)  # read three days after it happened, with a backlog


def test_an_orphan_read_late_waits_its_hold_from_when_it_was_read():
    watcher = OrdersWatcher(DetectionConfig(), Topics())
    shipment = shipped(at=0)
    held = watcher.handle_event(None, message(shipment), shipment, T0, READ).state
    assert held is not None and len(held.held) == 1

    soon = watcher.handle_tick(held, READ + timedelta(seconds=5))
    assert soon.dead_letters == [] and soon.state is not None  # still waiting for its order
    order = placed(at=-1)
    came = watcher.handle_event(soon.state, message(order, 1), order, T0, READ)
    assert came.state is not None and came.state.held == ()  # the order came: nothing orphaned


def test_an_orphan_whose_order_never_comes_is_dead_lettered_after_its_hold():
    watcher = OrdersWatcher(DetectionConfig(), Topics())
    shipment = shipped(at=0)
    held = watcher.handle_event(None, message(shipment), shipment, T0, READ).state
    assert held is not None
    released = watcher.handle_tick(held, READ + DetectionConfig().orphan_hold)
    assert [r.code for r in released.dead_letters] == ["orphan_expired"]
    # Judged without `arrived` (the event clock: read when it happened), as before.
    alone = watcher.handle_event(None, message(shipment), shipment, T0).state
    assert alone is not None and alone.held[0].release_at == T0 + DetectionConfig().orphan_hold
