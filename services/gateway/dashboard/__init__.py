"""The web dashboard, served by the gateway under /dashboard: ``app.include_router(dashboard.router)``."""

from services.gateway.dashboard.views import router

__all__ = ["router"]
