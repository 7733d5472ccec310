from services.outreach.helpdesk.app import main

main()
