"""The partner SOAP API's ``login`` call, the way Salesforce's own examples and simple-salesforce log in,
``logout`` (which clients send to end a SOAP session), ``getUserInfo`` and ``getServerTimestamp``
(which clients call right after logging in), and ``undelete`` and ``merge`` (Salesforce's REST API
has neither).

The session calls and the data calls pass the same front door as REST calls (latency and outage
faults, the API allocation, ``Sforce-Limit-Info``) and report usage in a ``LimitInfoHeader``;
``login`` and ``logout`` start and end a session and are not API requests.

Versions follow Salesforce: a version it does not serve (retired 21.0-30.0 and older, or unknown)
is a 500 ``UNSUPPORTED_API_VERSION`` fault, and ``login`` does not exist from API version 65.0 on
(Salesforce removed it there and retires it everywhere in Summer '27; see "SOAP API login()
Retirement" in the SOAP API developer guide).

Clients read the response by position (the official Pub/Sub Python example takes ``result[3]``,
``result[4]``, ``result[6]`` and ``userInfo[8]``), so the elements are written in exactly
Salesforce's order and without a ``soapenv:Header``. A bad login is a SOAP fault with HTTP 500.

simple-salesforce builds its login URL as ``https://{domain}.salesforce.com/services/Soap/u/{version}``;
point it here with ``domain="127.0.0.1:8443/services/Soap/u/62.0?"`` (the rest of its URL becomes
an ignored query string), or log in here yourself and pass ``session_id`` + ``instance_url``.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response

from services.common.tenant_config.api_versions import version_number
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.gateway import LIMIT_HEADER, FrontDoor
from services.salesforce_emulator.oauth import OAuthService
from services.salesforce_emulator.orgs import Org, OrgRegistry, User, derived_id
from services.salesforce_emulator.store import RecordStore
from services.salesforce_emulator.versions import SUPPORTED_VERSIONS

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Partner calls made in a session (SessionHeader required), by lower-cased name: their element names.
# All but logout count against the API allocation.
SESSION_CALLS = {
    "undelete": "undelete",
    "merge": "merge",
    "getuserinfo": "getUserInfo",
    "getservertimestamp": "getServerTimestamp",
    "logout": "logout",
}
# The first API version without login() (Winter '26).
LOGIN_REMOVED_IN = 65
# Salesforce's documented cap on MergeRequests per merge() call.
MAX_MERGE_REQUESTS = 200

_INVALID_LOGIN = "Invalid username, password, security token; or user locked out."


def user_info(org: Org, user: User, session_seconds: int) -> str:
    """The fields of a GetUserInfoResult (login's ``userInfo``, ``getUserInfo``'s result), in the WSDL's order."""
    nil = ' xsi:nil="true"/>'
    fields = [
        ("accessibilityMode", "false"),
        ("chatterExternal", "false"),
        ("currencySymbol", "$"),
        ("orgAttachmentFileSizeLimit", "5242880"),
        ("orgDefaultCurrencyIsoCode", "USD"),
        ("orgDefaultCurrencyLocale", "en_US"),
        ("orgDisallowHtmlAttachments", "false"),
        ("orgHasPersonAccounts", "false"),
        ("organizationId", org.org_id),
        ("organizationMultiCurrency", "false"),
        ("organizationName", org.state.name),
        ("profileId", derived_id("00e", "profile", org.alias)),
        ("roleId", None),
        ("sessionSecondsValid", str(session_seconds)),
        ("userDefaultCurrencyIsoCode", None),
        ("userEmail", user.email),
        ("userFullName", user.full_name),
        ("userId", user.user_id),
        ("userLanguage", "en_US"),
        ("userLocale", "en_US"),
        ("userName", user.username),
        ("userTimeZone", "GMT"),
        ("userType", "Standard"),
        ("userUiSkin", "Theme3"),
    ]
    return "".join(f"<{k}{nil}" if v is None else f"<{k}>{escape(v)}</{k}>" for k, v in fields)


def login_response(
    *, org: Org, user: User, session_id: str, instance_url: str, version: str, session_seconds: int
) -> str:
    """The loginResponse envelope, elements in Salesforce's order."""
    server = f"{instance_url}/services/Soap/u/{version}/{org.org_id[:15]}"
    metadata = f"{instance_url}/services/Soap/m/{version}/{org.org_id[:15]}"
    info = user_info(org, user, session_seconds)
    result = (
        f"<metadataServerUrl>{escape(metadata)}</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired>"
        "<sandbox>false</sandbox>"
        f"<serverUrl>{escape(server)}</serverUrl>"
        f"<sessionId>{escape(session_id)}</sessionId>"
        f"<userId>{user.user_id}</userId>"
        f"<userInfo>{info}</userInfo>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns="{PARTNER}"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><loginResponse><result>{result}</result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )


def soap_fault(code: str, message: str, *, fault_type: str = "LoginFault") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:sf="urn:fault.partner.soap.sforce.com"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode>"
        f"<faultstring>{code}: {escape(message)}</faultstring>"
        f'<detail><sf:{fault_type} xsi:type="sf:{fault_type}"><sf:exceptionCode>{code}</sf:exceptionCode>'
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:{fault_type}></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


def no_such_operation(name: str) -> str:
    """What Salesforce's SOAP stack answers for a call the version's WSDL does not have (a client fault)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
        "<soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode>"
        f"<faultstring>No operation available for request {{{PARTNER}}}{escape(name)}, "
        "please check the WSDL for the service.</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


def body_call(body: bytes) -> str:
    """The lower-cased name of the envelope's first Body element ("" when there is none)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    body_element = root.find(f"{{{SOAP_ENV}}}Body")
    if body_element is None or len(body_element) == 0:
        return ""
    return _local(body_element[0].tag).lower()


def parse_login(body: bytes) -> tuple[str, str] | None:
    """(username, password) of a partner ``login`` envelope, whatever prefixes the client chose."""
    try:
        # Expat (2.4.1+, bundled with Python 3.11) refuses entity-expansion bombs and external entities.
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    login = root.find(f"{{{SOAP_ENV}}}Body/{{{PARTNER}}}login")
    if login is None:
        return None
    username = login.findtext(f"{{{PARTNER}}}username")
    password = login.findtext(f"{{{PARTNER}}}password")
    if username is None or password is None:
        return None
    return username.strip(), password


@dataclass(frozen=True)
class SoapCall:
    """A partner API data call: its session, its ``CallOptions`` client and the call element."""

    session_id: str
    client: str | None
    call: ET.Element


def parse_call(body: bytes, name: str) -> SoapCall | None:
    """The ``name`` call of a partner envelope, or None when malformed; ``session_id`` is "" without a
    ``SessionHeader`` (an invalid session, as Salesforce reports it)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    call = root.find(f"{{{SOAP_ENV}}}Body/{{{PARTNER}}}{name}")
    if call is None:
        return None
    session = root.findtext(f"{{{SOAP_ENV}}}Header/{{{PARTNER}}}SessionHeader/{{{PARTNER}}}sessionId") or ""
    client = root.findtext(f"{{{SOAP_ENV}}}Header/{{{PARTNER}}}CallOptions/{{{PARTNER}}}client")
    return SoapCall(session.strip(), (client or "").strip() or None, call)


@dataclass(frozen=True)
class MergeRequest:
    """One ``request`` of a ``merge`` call. ``values`` maps field names to text, None to clear."""

    object_type: str
    master_id: str
    values: dict[str, str | None]
    loser_ids: list[str]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_merge_requests(call: ET.Element) -> list[MergeRequest]:
    """The ``request`` elements of a ``merge`` call, in order.

    The master's fields may come in any namespace: clients built from the WSDL use the sObject
    namespace, hand-written envelopes often do not.
    """
    requests = []
    for request in call.findall(f"{{{PARTNER}}}request"):
        master = request.find(f"{{{PARTNER}}}masterRecord")
        object_type = master_id = ""
        values: dict[str, str | None] = {}
        for element in master if master is not None else ():
            name, text = _local(element.tag), (element.text or "").strip()
            if name == "type":
                object_type = text
            elif name == "Id":
                master_id = text
            elif name == "fieldsToNull":
                values[text] = None
            elif element.get(f"{{{XSI}}}nil") == "true":
                values[name] = None
            else:
                values[name] = element.text or ""
        losers = [(e.text or "").strip() for e in request.findall(f"{{{PARTNER}}}recordToMergeIds")]
        requests.append(MergeRequest(object_type, master_id, values, losers))
    return requests


def _envelope(body: str, limit_info: tuple[int, int] | None = None) -> str:
    header = ""
    if limit_info is not None:
        # Salesforce reports API usage in the LimitInfoHeader of every data call's response.
        used, maximum = limit_info
        header = (
            "<soapenv:Header><LimitInfoHeader><limitInfo>"
            f"<current>{used}</current><limit>{maximum}</limit><type>API REQUESTS</type>"
            "</limitInfo></LimitInfoHeader></soapenv:Header>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns="{PARTNER}" xmlns:xsi="{XSI}">'
        f"{header}<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )


def _errors(error: SalesforceError) -> str:
    return (
        f"<errors><message>{escape(error.message)}</message>"
        f"<statusCode>{escape(error.error_code)}</statusCode></errors>"
    )


def merge_response(results: list[dict[str, Any] | SalesforceError], limit_info: tuple[int, int] | None = None) -> str:
    """``mergeResponse``: one MergeResult per request, elements in the WSDL's order."""
    items = []
    for result in results:
        if isinstance(result, SalesforceError):
            items.append(f'<result>{_errors(result)}<id xsi:nil="true"/><success>false</success></result>')
            continue
        merged = "".join(f"<mergedRecordIds>{escape(i)}</mergedRecordIds>" for i in result["mergedRecordIds"])
        related = "".join(f"<updatedRelatedIds>{escape(i)}</updatedRelatedIds>" for i in result["updatedRelatedIds"])
        items.append(f"<result><id>{escape(result['id'])}</id>{merged}<success>true</success>{related}</result>")
    return _envelope(f"<mergeResponse>{''.join(items)}</mergeResponse>", limit_info)


def get_user_info_response(info: str, limit_info: tuple[int, int] | None = None) -> str:
    return _envelope(f"<getUserInfoResponse><result>{info}</result></getUserInfoResponse>", limit_info)


def server_timestamp_response(now: float, limit_info: tuple[int, int] | None = None) -> str:
    """``getServerTimestampResponse``: the server's time, UTC with milliseconds."""
    moment = datetime.fromtimestamp(now, UTC)
    stamp = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    return _envelope(
        f"<getServerTimestampResponse><result><timestamp>{stamp}</timestamp></result></getServerTimestampResponse>",
        limit_info,
    )


def logout_response() -> str:
    return _envelope("<logoutResponse/>")


def undelete_response(
    results: list[tuple[str, SalesforceError | None]], limit_info: tuple[int, int] | None = None
) -> str:
    """``undeleteResponse``: one ``result`` per id, in request order."""
    items = []
    for record_id, error in results:
        if error is None:
            items.append(f"<result><id>{escape(record_id)}</id><success>true</success></result>")
        else:
            items.append(f'<result>{_errors(error)}<id xsi:nil="true"/><success>false</success></result>')
    return _envelope(f"<undeleteResponse>{''.join(items)}</undeleteResponse>", limit_info)


def build_soap_router(
    orgs: OrgRegistry,
    oauth: OAuthService,
    store: RecordStore,
    front_door: FrontDoor,
    *,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """``POST /services/Soap/u/{version}[/…]``: login, logout, getUserInfo, getServerTimestamp, undelete, merge."""
    router = APIRouter()

    def xml(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
        return Response(body, status_code=status, media_type="text/xml; charset=utf-8", headers=headers)

    def api_fault(code: str, message: str) -> Response:
        return xml(soap_fault(code, message, fault_type="ApiFault"), 500)

    @router.post("/services/Soap/u/{version}")
    @router.post("/services/Soap/u/{version}/")
    @router.post("/services/Soap/u/{version}/{org_hint}")
    async def soap(version: str, request: Request) -> Response:
        if version not in SUPPORTED_VERSIONS:
            return xml(
                soap_fault(
                    "UNSUPPORTED_API_VERSION",
                    f"Invalid Api version specified on URL: {version}",
                    fault_type="UnexpectedErrorFault",
                ),
                500,
            )
        action = request.headers.get("soapaction", "").strip('"').lower()
        body = await request.body()
        if not action:
            # The partner WSDL declares soapAction="" for every operation, so WSDL-generated
            # clients name the call only in the body.
            action = body_call(body)
        if action in SESSION_CALLS:
            return await session_call(action, version, body)
        credentials = parse_login(body)
        if credentials is None or action not in ("", "login"):
            return api_fault("INVALID_OPERATION", f"only login and {', '.join(SESSION_CALLS.values())} are emulated")
        if (version_number(version) or 0) >= LOGIN_REMOVED_IN:
            return xml(no_such_operation("login"), 500)
        username, password = credentials
        found = orgs.find_user(username)
        if found is None or not found[1].active or not found[1].password_matches(password):
            return xml(soap_fault("INVALID_LOGIN", _INVALID_LOGIN), 500)
        org, user = found
        session_id = oauth.issue_session(org, user, scope="api web full")
        envelope = login_response(
            org=org,
            user=user,
            session_id=session_id,
            instance_url=oauth.instance_url,
            version=version,
            session_seconds=int(oauth.access_token_ttl),
        )
        return xml(envelope, 200)

    async def session_call(action: str, version: str, body: bytes) -> Response:
        element = SESSION_CALLS[action]
        parsed = parse_call(body, element)
        if parsed is None:
            return api_fault("INVALID_OPERATION", f"malformed {element} request")
        session = oauth.authenticate(parsed.session_id) if parsed.session_id else None
        org = orgs.find(session.org_id) if session else None
        user = org.user(session.user_id) if org and session else None
        if session is None or org is None or user is None:
            return xml(
                soap_fault(
                    "INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader", fault_type="UnexpectedErrorFault"
                ),
                500,
            )
        if action == "logout":
            # Ends the session: its token stops working for every API, as Salesforce's logout() does.
            oauth.revoke(parsed.session_id)
            return xml(logout_response(), 200)
        try:
            limit_info = await front_door.admit(org, parsed.client)
        except SalesforceError as error:
            # An outage answers 503 as it does for REST; every other SOAP fault travels as HTTP 500.
            status = 503 if error.http_status == 503 else 500
            headers = {LIMIT_HEADER: front_door.header(org)}
            return xml(soap_fault(error.error_code, error.message, fault_type="ApiFault"), status, headers)
        ctx = CallContext(session.org_id, session.user_id, version, api_name="soap", client=parsed.client)
        if action == "getuserinfo":
            envelope = get_user_info_response(user_info(org, user, int(oauth.access_token_ttl)), limit_info)
        elif action == "getservertimestamp":
            envelope = server_timestamp_response(clock(), limit_info)
        elif action == "undelete":
            envelope = undelete(ctx, parsed.call, limit_info)
        else:
            requests = parse_merge_requests(parsed.call)
            if not requests or len(requests) > MAX_MERGE_REQUESTS:
                return api_fault("INVALID_OPERATION", f"merge takes 1 to {MAX_MERGE_REQUESTS} requests")
            envelope = merge_response([merge(ctx, r) for r in requests], limit_info)
        used, maximum = limit_info
        return xml(envelope, 200, {LIMIT_HEADER: f"api-usage={used}/{maximum}"})

    def undelete(ctx: CallContext, call: ET.Element, limit_info: tuple[int, int]) -> str:
        results: list[tuple[str, SalesforceError | None]] = []
        with store.transaction(ctx) as txn:
            for record_id in call.findall(f"{{{PARTNER}}}ids"):
                try:
                    results.append((txn.undelete((record_id.text or "").strip()), None))
                except SalesforceError as error:
                    # A failed operation writes nothing; the other ids still go through.
                    results.append(((record_id.text or "").strip(), error))
        return undelete_response(results, limit_info)

    def merge(ctx: CallContext, request: MergeRequest) -> dict[str, Any] | SalesforceError:
        # Each request is its own transaction, so one failing request leaves the others merged.
        if not request.object_type or not request.master_id:
            return SalesforceError(400, "MISSING_ARGUMENT", "masterRecord needs a type and an Id")
        try:
            return store.merge(ctx, request.object_type, request.master_id, request.loser_ids, request.values)
        except SalesforceError as error:
            if error.error_code == "NOT_FOUND":
                # SOAP's StatusCode has no NOT_FOUND: an id naming no record is a bad cross-reference.
                return SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            return error

    return router
