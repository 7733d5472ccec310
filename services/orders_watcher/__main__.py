from services.orders_watcher.entrypoints.stream import main

main()
