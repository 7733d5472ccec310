from services.risk_detector.entrypoints.stream import main

main()
