from services.outreach.entrypoints.worker import main

main()
