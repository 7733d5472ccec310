"""Local HTTP servers that speak the parts of the Twilio and SendGrid APIs we use."""

from tests.doubles.sendgrid import SendGridDouble
from tests.doubles.twilio import TwilioDouble

__all__ = ["SendGridDouble", "TwilioDouble"]
