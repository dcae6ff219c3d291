"""The partner SOAP API's ``login`` call, the way Salesforce's own examples and simple-salesforce log in,
and its ``undelete`` and ``merge`` calls (Salesforce's REST API has neither).

``undelete`` and ``merge`` pass the same front door as REST calls (latency and outage faults, the
API allocation, ``Sforce-Limit-Info``); they also report usage in a ``LimitInfoHeader``.

Clients read the response by position (the official Pub/Sub Python example takes ``result[3]``,
``result[4]``, ``result[6]`` and ``userInfo[8]``), so the elements are written in exactly
Salesforce's order and without a ``soapenv:Header``. A bad login is a SOAP fault with HTTP 500.

simple-salesforce builds its login URL as ``https://{domain}.salesforce.com/services/Soap/u/{version}``;
point it here with ``domain="127.0.0.1:8443/services/Soap/u/62.0?"`` (the rest of its URL becomes
an ignored query string), or log in here yourself and pass ``session_id`` + ``instance_url``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response

from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.gateway import LIMIT_HEADER, FrontDoor
from services.salesforce_emulator.oauth import OAuthService
from services.salesforce_emulator.orgs import Org, OrgRegistry, User, derived_id
from services.salesforce_emulator.store import RecordStore

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Partner calls that read or write data: they need a SessionHeader and count against the API allocation.
DATA_CALLS = ("undelete", "merge")
# Salesforce's documented cap on MergeRequests per merge() call.
MAX_MERGE_REQUESTS = 200

_INVALID_LOGIN = "Invalid username, password, security token; or user locked out."


def login_response(
    *, org: Org, user: User, session_id: str, instance_url: str, version: str, session_seconds: int
) -> str:
    """The loginResponse envelope, elements in Salesforce's order."""
    server = f"{instance_url}/services/Soap/u/{version}/{org.org_id[:15]}"
    metadata = f"{instance_url}/services/Soap/m/{version}/{org.org_id[:15]}"
    nil = ' xsi:nil="true"/>'
    user_info = [
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
    info = "".join(f"<{k}{nil}" if v is None else f"<{k}>{escape(v)}</{k}>" for k, v in user_info)
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
    """The ``name`` call of a partner envelope with a ``SessionHeader``, or None when malformed."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    call = root.find(f"{{{SOAP_ENV}}}Body/{{{PARTNER}}}{name}")
    session = root.findtext(f"{{{SOAP_ENV}}}Header/{{{PARTNER}}}SessionHeader/{{{PARTNER}}}sessionId")
    if call is None or not session:
        return None
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


def build_soap_router(orgs: OrgRegistry, oauth: OAuthService, store: RecordStore, front_door: FrontDoor) -> APIRouter:
    """``POST /services/Soap/u/{version}[/…]`` answering ``login``, ``undelete`` and ``merge``."""
    router = APIRouter()

    def xml(body: str, status: int, headers: dict[str, str] | None = None) -> Response:
        return Response(body, status_code=status, media_type="text/xml; charset=utf-8", headers=headers)

    def api_fault(code: str, message: str) -> Response:
        return xml(soap_fault(code, message, fault_type="ApiFault"), 500)

    @router.post("/services/Soap/u/{version}")
    @router.post("/services/Soap/u/{version}/")
    @router.post("/services/Soap/u/{version}/{org_hint}")
    async def soap(version: str, request: Request) -> Response:
        action = request.headers.get("soapaction", "").strip('"').lower()
        body = await request.body()
        if not action:
            # The partner WSDL declares soapAction="" for every operation, so WSDL-generated
            # clients name the call only in the body.
            action = body_call(body)
        if action in DATA_CALLS:
            return await data_call(action, version, body)
        credentials = parse_login(body)
        if credentials is None or action not in ("", "login"):
            return api_fault("INVALID_OPERATION", "only login, undelete and merge are emulated")
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

    async def data_call(action: str, version: str, body: bytes) -> Response:
        parsed = parse_call(body, action)
        if parsed is None:
            return api_fault("INVALID_OPERATION", f"malformed {action} request")
        session = oauth.authenticate(parsed.session_id)
        org = orgs.find(session.org_id) if session else None
        if session is None or org is None:
            return xml(
                soap_fault(
                    "INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader", fault_type="UnexpectedErrorFault"
                ),
                500,
            )
        try:
            limit_info = await front_door.admit(org, parsed.client)
        except SalesforceError as error:
            # An outage answers 503 as it does for REST; every other SOAP fault travels as HTTP 500.
            status = 503 if error.http_status == 503 else 500
            headers = {LIMIT_HEADER: front_door.header(org)}
            return xml(soap_fault(error.error_code, error.message, fault_type="ApiFault"), status, headers)
        ctx = CallContext(session.org_id, session.user_id, version, api_name="soap", client=parsed.client)
        if action == "undelete":
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
