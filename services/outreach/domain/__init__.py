"""Pure outreach logic: the decision pipeline, rendering, offers, SMS segments."""
