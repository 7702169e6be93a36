"""The control-plane HTTP API: ``create_control_app(settings, services) -> Starlette``.

Handlers are thin: authenticate, parse one schema, call one ``ControlService`` method, serialize.
Every route is declared once in ``endpoints()``; the router and the OpenAPI document are both
built from that table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tradeengine import __version__
from tradeengine.ai.wire import result_to_json
from tradeengine.api import schemas
from tradeengine.api.auth import (
    USERS,
    USERS_AND_TENANTS,
    JwksKeySource,
    Principal,
    PrincipalKind,
    TokenVerifier,
    authenticate,
)
from tradeengine.api.errors import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    describe_validation_error,
    exception_handlers,
)
from tradeengine.api.metrics import ControlMetrics
from tradeengine.api.openapi import Endpoint, build_openapi, docs_html
from tradeengine.api.ratelimit import UserRateLimiter
from tradeengine.domain.enums import TraderStatus
from tradeengine.settings import MachineProviderKind, Settings

if TYPE_CHECKING:
    # The services pull in the store (SQLAlchemy): imported off the event loop at start-up instead.
    from tradeengine.api.services import ControlService

MAX_BODY_BYTES = 1_000_000
SWEEP_INTERVAL_S = 60.0
READY_WAIT_S = 60.0
M = TypeVar("M", bound=BaseModel)


@dataclass
class ControlServices:
    """What the app needs; ``build_control_services`` makes one from settings, tests build their own."""

    service: ControlService
    verifier: TokenVerifier
    run_sweeper: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed request, handed to a handler."""

    request: Request
    principal: Principal | None
    body: Any
    query: Any

    @property
    def service(self) -> ControlService:
        services: ControlServices = self.request.app.state.services
        return services.service

    def path_uuid(self, name: str) -> uuid.UUID:
        value = self.request.path_params[name]
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- helpers --------------------------------------------------------------------------------------


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True), status_code=status)


def acting_user(principal: Principal | None, requested: uuid.UUID | None) -> uuid.UUID:
    """The user a call acts for: users and tenants act for themselves; admins name a user."""
    assert principal is not None
    if principal.kind is PrincipalKind.ADMIN:
        if requested is None:
            raise BadRequestError("userId: required with a service-role token")
        return requested
    assert principal.user_id is not None
    if requested is not None and requested != principal.user_id:
        raise ForbiddenError("userId: you can only act for yourself")
    return principal.user_id


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(f"body: larger than {MAX_BODY_BYTES} bytes", status=413)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(f"body: larger than {MAX_BODY_BYTES} bytes", status=413)
    if not raw.strip():
        raise BadRequestError("body: a JSON object is required")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequestError("body: not valid JSON") from None


def _parse(model: type[M], data: Any, *, location: str = "") -> M:
    if not isinstance(data, dict):
        raise BadRequestError(f"{location or 'body'}: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(describe_validation_error(exc, location=location), status=422) from None


def _query_dict(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    params = request.query_params
    known = {info.alias or name for name, info in model.model_fields.items()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadRequestError(f"{unknown[0]}: unknown query parameter")
    out: dict[str, Any] = {}
    for key in params:
        values = params.getlist(key)
        if len(values) > 1:
            raise BadRequestError(f"{key}: give it once")
        out[key] = values[0]
    return out


# --- handlers -------------------------------------------------------------------------------------


async def generate_strategy(call: Call) -> Response:
    body: schemas.GenerateStrategyRequest = call.body
    user_id = acting_user(call.principal, body.user_id)
    trader, machine_id, trigger_rate = await call.service.generate(user_id, body)
    return _json(
        schemas.GenerateStrategyResponse(
            trader=schemas.TraderOut.model_validate(trader), machine_id=machine_id, trigger_rate=trigger_rate
        )
    )


async def analyze_signal(call: Call) -> Response:
    assert call.principal is not None
    user_id = None if call.principal.is_admin else call.principal.user_id
    result = await call.service.analyze(user_id, call.body)
    # The wire format is shared with the tenant's HttpAnalyst (tradeengine.ai.wire).
    analysis = schemas.AnalysisOut.model_validate(result_to_json(result)["analysis"])
    return _json(schemas.AnalyzeSignalResponse(analysis=analysis))


async def provision_machine(call: Call) -> Response:
    body: schemas.ProvisionRequest = call.body
    user_id = acting_user(call.principal, body.user_id)
    machine, created = await call.service.provision(user_id, body.tier)
    out = schemas.ProvisionResponse(created=created, machine=schemas.MachineOut.model_validate(machine))
    return _json(out, 201 if created else 200)


async def destroy_machine(call: Call) -> Response:
    body: schemas.DestroyRequest = call.body
    user_id = acting_user(call.principal, body.user_id)
    if body.reason == "admin" and not (call.principal and call.principal.is_admin):
        raise ForbiddenError("reason: 'admin' is reserved for service-role tokens")
    return _json(await call.service.destroy(user_id, body.reason))


async def my_machine(call: Call) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    machine = await call.service.machine(user_id)
    out = schemas.MachineOut.model_validate(machine) if machine is not None else None
    return _json(schemas.MachineMeResponse(machine=out))


async def me(call: Call) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    return _json(schemas.UserResponse(user=await call.service.me(user_id)))


async def put_exchange_keys(call: Call) -> Response:
    body: schemas.ExchangeKeysRequest = call.body
    user_id = acting_user(call.principal, None)
    return _json(
        schemas.UserResponse(user=await call.service.set_exchange_keys(user_id, body.api_key, body.secret_key))
    )


async def list_traders(call: Call) -> Response:
    query: schemas.TraderQuery = call.query
    user_id = acting_user(call.principal, query.user_id)
    page = await call.service.list_traders(user_id, query)
    return _json(
        schemas.TraderListResponse(
            traders=[schemas.TraderOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor
        )
    )


async def get_trader(call: Call) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    trader = await call.service.get_trader(user_id, call.path_uuid("traderId"))
    return _json(schemas.TraderResponse(trader=schemas.TraderOut.model_validate(trader), tenant_notified=False))


async def update_trader(call: Call) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    trader, notified = await call.service.update_trader(user_id, call.path_uuid("traderId"), call.body)
    return _json(schemas.TraderResponse(trader=schemas.TraderOut.model_validate(trader), tenant_notified=notified))


async def pause_trader(call: Call) -> Response:
    return await _set_status(call, TraderStatus.PAUSED)


async def resume_trader(call: Call) -> Response:
    return await _set_status(call, TraderStatus.ACTIVE)


async def _set_status(call: Call, status: TraderStatus) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    trader, notified = await call.service.set_trader_status(user_id, call.path_uuid("traderId"), status)
    return _json(schemas.TraderResponse(trader=schemas.TraderOut.model_validate(trader), tenant_notified=notified))


async def delete_trader(call: Call) -> Response:
    user_id = acting_user(call.principal, call.query.user_id)
    trader_id = call.path_uuid("traderId")
    notified = await call.service.delete_trader(user_id, trader_id)
    return _json(schemas.DeletedResponse(id=trader_id, tenant_notified=notified))


def _lister(
    kind: str, out: type[BaseModel], response: type[BaseModel], key: str
) -> Callable[[Call], Awaitable[Response]]:
    async def handler(call: Call) -> Response:
        query: schemas.ListQuery = call.query
        user_id = acting_user(call.principal, query.user_id)
        page = await call.service.list_rows(kind, user_id, query)
        items = [out.model_validate(row) for row in page.items]
        return _json(response.model_validate({key: items, "next_cursor": page.next_cursor}))

    return handler


def _list_endpoint(
    kind: str,
    out: type[BaseModel],
    response: type[BaseModel],
    query: type[BaseModel],
    operation_id: str,
    *,
    summary: str | None = None,
) -> Endpoint:
    """``GET /v1/<kind>``: the caller's rows of one table, filtered, newest first, cursor-paged."""
    return Endpoint(
        "GET",
        f"/v1/{kind}",
        _lister(kind, out, response, kind),
        summary or f"List {kind}",
        "reads",
        operation_id,
        query=query,
        response=response,
        auth=USERS,
    )


async def openapi_json(call: Call) -> Response:
    return JSONResponse(call.request.app.state.openapi)


async def docs_page(call: Call) -> Response:
    return HTMLResponse(docs_html(call.request.app.state.openapi))


async def health(call: Call) -> Response:
    state = call.request.app.state
    body: dict[str, Any] = {"status": "ok", "mode": "control", "version": __version__, "ready": state.ready.is_set()}
    if state.startup_error is not None:
        # A control plane that could not start must be restarted, not sent traffic.
        return JSONResponse({**body, "status": "error", "error": state.startup_error}, status_code=503)
    return JSONResponse(body)


async def metrics_json(call: Call) -> Response:
    metrics: ControlMetrics = call.request.app.state.metrics
    return JSONResponse(metrics.as_json())


async def metrics_prometheus(call: Call) -> Response:
    metrics: ControlMetrics = call.request.app.state.metrics
    return PlainTextResponse(metrics.as_prometheus(), media_type="text/plain; version=0.0.4")


# --- the endpoint table ---------------------------------------------------------------------------


def endpoints() -> list[Endpoint]:
    """Every route of the control API, in documentation order."""
    trader = "/v1/traders/{traderId}"
    return [
        Endpoint(
            "POST",
            "/v1/strategies/generate",
            generate_strategy,
            "Generate a trader from a description",
            "strategies",
            "generateStrategy",
            body=schemas.GenerateStrategyRequest,
            response=schemas.GenerateStrategyResponse,
            auth=USERS,
            rate_limit="generate",
            errors=(404, 503),
            aliases=("/functions/v1/generate-strategy",),
            description="Generates, sandbox-validates and saves a trader; on the user's first trader it "
            "provisions their machine and returns machineId.",
        ),
        Endpoint(
            "POST",
            "/v1/signals/analyze",
            analyze_signal,
            "Analyze a signal",
            "signals",
            "analyzeSignal",
            body=schemas.AnalyzeSignalRequest,
            response=schemas.AnalyzeSignalResponse,
            auth=USERS_AND_TENANTS,
            rate_limit="analyze",
            errors=(404, 503),
            aliases=("/functions/v1/analyze-signal",),
            description="Called by tenants with their tenant token; the trader must belong to the caller.",
        ),
        Endpoint(
            "POST",
            "/v1/machines/provision",
            provision_machine,
            "Provision the user's machine (idempotent)",
            "machines",
            "provisionMachine",
            body=schemas.ProvisionRequest,
            response=schemas.ProvisionResponse,
            status=201,
            also=(200,),
            auth=USERS,
            errors=(404, 503),
            aliases=("/functions/v1/provision-machine",),
        ),
        Endpoint(
            "POST",
            "/v1/machines/destroy",
            destroy_machine,
            "Shut down and destroy the user's machine",
            "machines",
            "destroyMachine",
            body=schemas.DestroyRequest,
            response=schemas.DestroyResponse,
            auth=USERS,
            errors=(404, 503),
            aliases=("/functions/v1/destroy-machine",),
        ),
        Endpoint(
            "GET",
            "/v1/machines/me",
            my_machine,
            "The caller's current machine",
            "machines",
            "getMyMachine",
            response=schemas.MachineMeResponse,
            auth=USERS,
            errors=(400, 404, 422),
            query=schemas.UserQuery,
        ),
        Endpoint(
            "GET",
            "/v1/me",
            me,
            "The caller's account",
            "users",
            "getMe",
            response=schemas.UserResponse,
            auth=USERS,
            errors=(404,),
            query=schemas.UserQuery,
        ),
        Endpoint(
            "PUT",
            "/v1/me/exchange-keys",
            put_exchange_keys,
            "Store Binance keys (encrypted, never returned)",
            "users",
            "putExchangeKeys",
            body=schemas.ExchangeKeysRequest,
            response=schemas.UserResponse,
            auth=frozenset({PrincipalKind.USER}),
            errors=(404, 503),
        ),
        Endpoint(
            "GET",
            "/v1/traders",
            list_traders,
            "List traders",
            "traders",
            "listTraders",
            query=schemas.TraderQuery,
            response=schemas.TraderListResponse,
            auth=USERS,
        ),
        Endpoint(
            "GET",
            trader,
            get_trader,
            "Get a trader",
            "traders",
            "getTrader",
            response=schemas.TraderResponse,
            auth=USERS,
            query=schemas.UserQuery,
        ),
        Endpoint(
            "PATCH",
            trader,
            update_trader,
            "Update a trader (code re-validated in the sandbox)",
            "traders",
            "updateTrader",
            body=schemas.TraderUpdateRequest,
            response=schemas.TraderResponse,
            auth=USERS,
            query=schemas.UserQuery,
        ),
        Endpoint(
            "POST",
            trader + "/pause",
            pause_trader,
            "Pause a trader",
            "traders",
            "pauseTrader",
            response=schemas.TraderResponse,
            auth=USERS,
            query=schemas.UserQuery,
        ),
        Endpoint(
            "POST",
            trader + "/resume",
            resume_trader,
            "Resume a trader",
            "traders",
            "resumeTrader",
            response=schemas.TraderResponse,
            auth=USERS,
            errors=(409,),
            query=schemas.UserQuery,
        ),
        Endpoint(
            "DELETE",
            trader,
            delete_trader,
            "Delete a trader",
            "traders",
            "deleteTrader",
            response=schemas.DeletedResponse,
            auth=USERS,
            errors=(409,),
            query=schemas.UserQuery,
        ),
        _list_endpoint("signals", schemas.SignalOut, schemas.SignalListResponse, schemas.SignalQuery, "listSignals"),
        _list_endpoint(
            "positions", schemas.PositionOut, schemas.PositionListResponse, schemas.PositionQuery, "listPositions"
        ),
        _list_endpoint("trades", schemas.TradeOut, schemas.TradeListResponse, schemas.TradeQuery, "listTrades"),
        _list_endpoint(
            "analyses",
            schemas.AnalysisHistoryOut,
            schemas.AnalysisListResponse,
            schemas.AnalysisQuery,
            "listAnalyses",
            summary="List analyses (analysis_history)",
        ),
        Endpoint("GET", "/health", health, "Liveness", "operations", "health", response=schemas.HealthResponse),
        Endpoint("GET", "/metrics", metrics_json, "Request metrics (JSON)", "operations", "metrics"),
        Endpoint(
            "GET",
            "/metrics/prometheus",
            metrics_prometheus,
            "Request metrics (Prometheus text)",
            "operations",
            "metricsPrometheus",
            content_type="text/plain",
        ),
        Endpoint("GET", "/openapi.json", openapi_json, "This document", "operations", "openapi"),
        Endpoint(
            "GET",
            "/docs",
            docs_page,
            "Human-readable API reference",
            "operations",
            "docs",
            content_type="text/html",
        ),
    ]


def _route_path(path: str) -> str:
    # OpenAPI's {traderId} becomes Starlette's {traderId:uuid}: a non-UUID id is a 404 at routing.
    return path.replace("{traderId}", "{traderId:uuid}")


def _starlette_endpoint(ep: Endpoint, route_label: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        status = 500
        metrics: ControlMetrics = request.app.state.metrics
        try:
            if ep.auth is not None:
                await _wait_ready(request)
            principal = await authenticate(request, allow=ep.auth) if ep.auth is not None else None
            if ep.rate_limit is not None:
                assert principal is not None
                limiter: UserRateLimiter = request.app.state.limiters[ep.rate_limit]
                try:
                    limiter.check(principal.subject())
                except ApiError:
                    metrics.count(f"rate_limited_{ep.rate_limit}")
                    raise
            query = _parse(ep.query, _query_dict(request, ep.query)) if ep.query is not None else None
            body = _parse(ep.body, await _read_json(request)) if ep.body is not None else None
            response: Response = await ep.handler(Call(request, principal, body, query))
            status = response.status_code
            return response
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            metrics.observe(ep.method, route_label, status, time.perf_counter() - started)

    return endpoint


async def _wait_ready(request: Request) -> None:
    """Hold a request until the services are built (they are, at once, unless the process just started)."""
    state = request.app.state
    if not state.ready.is_set():
        try:
            await asyncio.wait_for(state.ready.wait(), READY_WAIT_S)
        except TimeoutError:
            raise ApiError("control plane is still starting; retry shortly", status=503) from None
    if state.startup_error is not None:
        raise ApiError("control plane failed to start; see its log", status=503)


def _preload() -> None:
    # Run in a worker thread at start-up: importing SQLAlchemy and friends takes seconds on a busy
    # machine, and /health should answer meanwhile.
    import tradeengine.api.ai_wiring
    import tradeengine.api.services
    import tradeengine.machines.factory
    import tradeengine.machines.service
    import tradeengine.store.engine  # noqa: F401


async def _in_daemon_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in a daemon thread: unlike ``asyncio.to_thread`` a SIGTERM during start-up
    does not have to wait for it (the default executor is joined at exit; daemon threads are not)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="control-preload", daemon=True).start()
    await done


def check_settings(settings: Settings) -> None:
    """Fail fast (at start-up, before serving) on settings the control plane can't run with."""
    if settings.machine_provider is MachineProviderKind.FLY and settings.fly_api_token is None:
        raise ValueError("TRADEENGINE_FLY_API_TOKEN is required with TRADEENGINE_MACHINE_PROVIDER=fly")
    if settings.jwt_secret is None and settings.jwks_url is None:
        logger.warning("neither TRADEENGINE_JWT_SECRET nor TRADEENGINE_JWKS_URL is set: user tokens are refused")


# --- composition ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def build_control_services(settings: Settings) -> AsyncIterator[ControlServices]:
    """Open everything the control plane needs from settings; close it all on exit."""
    from tradeengine.api.ai_wiring import build_ai
    from tradeengine.api.services import ControlService
    from tradeengine.machines.factory import build_machine_service, build_provider, secret_box
    from tradeengine.store.engine import create_engine, create_session_factory

    engine = create_engine(settings)
    factory = create_session_factory(engine)
    box, durable = secret_box(settings)
    provider = build_provider(settings)
    machines = build_machine_service(settings, factory, provider, box)
    jwks = JwksKeySource(settings.jwks_url) if settings.jwks_url else None
    verifier = TokenVerifier(
        jwt_secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        audience=settings.jwt_audience,
        jwks=jwks,
        tenant_tokens=machines,
    )
    try:
        # The AI services share the control plane's engine (quota backend) and sessions (recorder,
        # prompts); they live as long as these services, i.e. the app's lifespan.
        async with build_ai(settings, engine=engine, session_factory=factory) as ai:
            service = ControlService(
                factory,
                machines=machines,
                generator=ai.generation,
                analyst=ai.analyst,
                secrets=box if durable else None,
            )
            yield ControlServices(service=service, verifier=verifier, run_sweeper=True, extra={"ai": ai})
    finally:
        await provider.aclose()
        await engine.dispose()


def create_control_app(settings: Settings, services: ControlServices | None = None) -> Starlette:
    """The control-plane ASGI app. Without ``services`` its lifespan builds them from settings."""
    eps = endpoints()
    routes: list[Route] = []
    for ep in eps:
        for path in (ep.path, *ep.aliases):
            routes.append(Route(_route_path(path), _starlette_endpoint(ep, path), methods=[ep.method]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.ready = asyncio.Event()
        app.state.startup_error = None
        if services is None:
            check_settings(settings)
        sweeper: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as stack:

            async def start() -> None:
                try:
                    active = services
                    if active is None:
                        await _in_daemon_thread(_preload)
                        active = await stack.enter_async_context(build_control_services(settings))
                    app.state.services = active
                    app.state.verifier = active.verifier
                    machines = active.service.machines
                    if active.run_sweeper and machines is not None:
                        sweeper.append(asyncio.create_task(machines.run_sweeper(SWEEP_INTERVAL_S)))
                except Exception as exc:
                    app.state.startup_error = f"{type(exc).__name__}: {exc}"
                    logger.opt(exception=exc).error("control plane failed to start")
                finally:
                    app.state.ready.set()

            # Serve /health at once; API requests wait (up to READY_WAIT_S) for start() to finish.
            starting = asyncio.create_task(start(), name="control-startup")
            try:
                yield
            finally:
                for task in (starting, *sweeper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = Starlette(routes=routes, exception_handlers=exception_handlers(), lifespan=lifespan)
    app.state.openapi = build_openapi(eps, title="tradeengine control API", version=__version__)
    app.state.metrics = ControlMetrics()
    app.state.limiters = {
        "generate": UserRateLimiter("generate", settings.generate_requests_per_minute),
        "analyze": UserRateLimiter("analyze", settings.analyze_requests_per_minute),
    }
    app.state.ready = asyncio.Event()
    app.state.startup_error = None
    if services is not None:
        # Usable without running the lifespan (e.g. a bare ASGI transport in tests).
        app.state.services = services
        app.state.verifier = services.verifier
        app.state.ready.set()
    return app


def route_table() -> Mapping[str, str]:
    """``"METHOD path" -> operationId`` for every route and alias (docs and tests use it)."""
    table: dict[str, str] = {}
    for ep in endpoints():
        for path in (ep.path, *ep.aliases):
            table[f"{ep.method} {path}"] = ep.operation_id
    return table
