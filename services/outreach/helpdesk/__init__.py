"""The helpdesk adapter: hand-offs (support.handoffs) become Zendesk tickets, and the
agents' outcomes (a signed Zendesk webhook) become support.resolutions.

    python -m services.outreach.helpdesk

docs/conversations.md ("The helpdesk") says how to set up Zendesk's side.
"""
