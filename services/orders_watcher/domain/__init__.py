"""Pure detection logic of orders_watcher: order state, incident rules, transitions."""
