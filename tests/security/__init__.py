"""Security tests (docs/security.md): what a marketer types, an outsider sends or a
viewer reads must not take production down or leak a customer."""
