"""The partner SOAP API's ``login`` call, the way Salesforce's own examples and simple-salesforce log in,
and its ``undelete`` call (Salesforce's REST API has no undelete).

Clients read the response by position (the official Pub/Sub Python example takes ``result[3]``,
``result[4]``, ``result[6]`` and ``userInfo[8]``), so the elements are written in exactly
Salesforce's order and without a ``soapenv:Header``. A bad login is a SOAP fault with HTTP 500.

simple-salesforce builds its login URL as ``https://{domain}.salesforce.com/services/Soap/u/{version}``;
point it here with ``domain="127.0.0.1:8443/services/Soap/u/62.0?"`` (the rest of its URL becomes
an ignored query string), or log in here yourself and pass ``session_id`` + ``instance_url``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response

from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.oauth import OAuthService
from services.salesforce_emulator.orgs import Org, OrgRegistry, User, derived_id
from services.salesforce_emulator.store import RecordStore

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"

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


def parse_undelete(body: bytes) -> tuple[str, str | None, list[str]] | None:
    """(session id, Sforce client, record ids) of a partner ``undelete`` envelope."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    call = root.find(f"{{{SOAP_ENV}}}Body/{{{PARTNER}}}undelete")
    session = root.findtext(f"{{{SOAP_ENV}}}Header/{{{PARTNER}}}SessionHeader/{{{PARTNER}}}sessionId")
    if call is None or not session:
        return None
    client = root.findtext(f"{{{SOAP_ENV}}}Header/{{{PARTNER}}}CallOptions/{{{PARTNER}}}client")
    ids = [(e.text or "").strip() for e in call.findall(f"{{{PARTNER}}}ids")]
    return session.strip(), (client or "").strip() or None, ids


def undelete_response(results: list[tuple[str, SalesforceError | None]]) -> str:
    """``undeleteResponse``: one ``result`` per id, in request order."""
    items = []
    for record_id, error in results:
        if error is None:
            items.append(f"<result><id>{escape(record_id)}</id><success>true</success></result>")
        else:
            items.append(
                f"<result><errors><message>{escape(error.message)}</message>"
                f"<statusCode>{escape(error.error_code)}</statusCode></errors>"
                '<id xsi:nil="true"/><success>false</success></result>'
            )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns="{PARTNER}"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><undeleteResponse>{''.join(items)}</undeleteResponse></soapenv:Body></soapenv:Envelope>"
    )


def build_soap_router(orgs: OrgRegistry, oauth: OAuthService, store: RecordStore) -> APIRouter:
    """``POST /services/Soap/u/{version}[/…]`` answering ``login`` and ``undelete``."""
    router = APIRouter()

    def xml(body: str, status: int) -> Response:
        return Response(body, status_code=status, media_type="text/xml; charset=utf-8")

    @router.post("/services/Soap/u/{version}")
    @router.post("/services/Soap/u/{version}/")
    @router.post("/services/Soap/u/{version}/{org_hint}")
    async def soap(version: str, request: Request) -> Response:
        action = request.headers.get("soapaction", "").strip('"').lower()
        body = await request.body()
        if action == "undelete":
            return undelete(version, body)
        credentials = parse_login(body)
        if credentials is None or action not in ("", "login"):
            return xml(
                soap_fault("INVALID_OPERATION", "only login and undelete are emulated", fault_type="ApiFault"), 500
            )
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

    def undelete(version: str, body: bytes) -> Response:
        parsed = parse_undelete(body)
        if parsed is None:
            return xml(soap_fault("INVALID_OPERATION", "malformed undelete request", fault_type="ApiFault"), 500)
        session_id, client, ids = parsed
        session = oauth.authenticate(session_id)
        if session is None:
            return xml(
                soap_fault(
                    "INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader", fault_type="UnexpectedErrorFault"
                ),
                500,
            )
        ctx = CallContext(session.org_id, session.user_id, version, api_name="soap", client=client)
        results: list[tuple[str, SalesforceError | None]] = []
        with store.transaction(ctx) as txn:
            for record_id in ids:
                try:
                    results.append((txn.undelete(record_id), None))
                except SalesforceError as error:
                    # A failed operation writes nothing; the other ids still go through.
                    results.append((record_id, error))
        return xml(undelete_response(results), 200)

    return router
