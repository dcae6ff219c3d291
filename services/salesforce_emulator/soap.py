"""The partner SOAP API's ``login`` call, the way Salesforce's own examples and simple-salesforce log in.

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

from services.salesforce_emulator.oauth import OAuthService
from services.salesforce_emulator.orgs import Org, OrgRegistry, User, derived_id

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


def build_soap_router(orgs: OrgRegistry, oauth: OAuthService) -> APIRouter:
    """``POST /services/Soap/u/{version}[/…]`` answering ``login``."""
    router = APIRouter()

    def xml(body: str, status: int) -> Response:
        return Response(body, status_code=status, media_type="text/xml; charset=utf-8")

    @router.post("/services/Soap/u/{version}")
    @router.post("/services/Soap/u/{version}/")
    @router.post("/services/Soap/u/{version}/{org_hint}")
    async def soap(version: str, request: Request) -> Response:
        action = request.headers.get("soapaction", "").strip('"').lower()
        credentials = parse_login(await request.body())
        if credentials is None or action not in ("", "login"):
            return xml(soap_fault("INVALID_OPERATION", "only the login call is emulated", fault_type="ApiFault"), 500)
        username, password = credentials
        found = orgs.find_user(username)
        if found is None or not found[1].active or not found[1].password_matches(password):
            return xml(soap_fault("INVALID_LOGIN", _INVALID_LOGIN), 500)
        org, user = found
        session_id = oauth.issue_session(org, user, scope="api web full")
        body = login_response(
            org=org,
            user=user,
            session_id=session_id,
            instance_url=oauth.instance_url,
            version=version,
            session_seconds=int(oauth.access_token_ttl),
        )
        return xml(body, 200)

    return router
