import asyncio

from common.logs import configure_logging
from services.preferences.bootstrap import SERVICE, serve
from services.preferences.config import Settings

settings = Settings()
configure_logging(SERVICE, settings.log_level, settings.log_format)
settings.configure_tracing(SERVICE)
asyncio.run(serve(settings))
