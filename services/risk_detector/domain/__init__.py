"""Pure risk logic: customer profile, churn-risk score with reasons, outreach decisions."""
