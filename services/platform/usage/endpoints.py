from __future__ import annotations

from fastapi import APIRouter, Request

from services.gateway.deps import CurrentPrincipal, SessionDep, SettingsDep
from services.gateway.openapi import problem_responses
from services.platform.usage import quota
from services.platform.usage.schemas import Meter, UsagePublic
from services.platform.usage.service import remember_quota_headers
from services.platform.usage.snapshots import current_snapshot

router = APIRouter(prefix="/v1/usage", tags=["usage"])


def _meter(used: float, limit: float) -> Meter:
    return Meter(used=used, limit=limit, remaining=max(0.0, limit - used))


@router.get(
    "", response_model=UsagePublic, responses=problem_responses(401, 429), summary="This month's usage"
)
async def get_usage(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> UsagePublic:
    def read() -> quota.UsageSnapshot:
        # A read: the request's transaction ends here (no commit after the endpoint), and the
        # counters are read outside any transaction, one round trip instead of BEGIN/SELECT/COMMIT.
        session.commit()
        with session.get_bind().connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            return quota.snapshot(autocommit, principal.user_id, principal.user.plan, settings=settings)

    scope_state = request.scope.setdefault("state", {})
    snapshot = await current_snapshot(scope_state, principal.user_id, principal.user.plan, settings, read)
    remember_quota_headers(snapshot, scope_state)
    return UsagePublic(
        period=snapshot.period,
        plan=snapshot.plan,
        analyses=_meter(snapshot.analyses_used, snapshot.analyses_limit),
        video_seconds=_meter(round(snapshot.seconds_used, 3), snapshot.seconds_limit),
        requests_per_minute=quota.plan_limits(principal.user.plan, settings).requests_per_minute,
        resets_at=snapshot.resets_at,
    )
