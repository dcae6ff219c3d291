"""Which Salesforce field each app field most likely is, for the mapping editor. Pure.

:func:`suggest` scores every writable Salesforce field of an object against each app field from three
kinds of evidence: the fields' names and labels, normalised (case, ``_``, camelCase, the ``__c`` suffix
and a namespace prefix) and rewritten through a table of generic CRM vocabulary (a ``zip`` is a
postal code, a ``cell`` a mobile phone), compared word by word with rapidfuzz; whether the types can
carry each other's values (a field whose type cannot is no candidate at all); and how many of the app
field's picklist values Salesforce knows, by value or label.

A field comes out AUTO only when its best candidate is both near-certain and clearly ahead of the next
one, since an automatic mapping is accepted without a second look; SUGGESTED leaves the choice to the
admin; UNMAPPED says nothing fits well enough (weak candidates may still be listed). The thresholds
are tuned on the labelled set in ``bench/data/suggestions.yaml`` (``python -m bench suggestions``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from rapidfuzz import fuzz
from rapidfuzz.distance import Prefix

from services.common.schema import AppField, AppObject, CrmField, CrmObject
from services.common.tenant_config import FieldType
from services.common.tenant_config.validation import SALESFORCE_READ_ONLY_FIELDS

AUTO_CONFIDENCE = 0.9
AUTO_MARGIN = 0.1
SUGGESTED_CONFIDENCE = 0.55
# Below this a candidate is noise, not worth showing even beside an UNMAPPED field.
LISTED_CONFIDENCE = 0.35
MAX_CANDIDATES = 3
# Pointing at the right object is weaker evidence than a name: an object may hold several references
# to the same one (a primary and a billing contact).
ALIAS_WEIGHT = 0.9

# Two words are the same word at this rapidfuzz ratio (organisation/organization, adress/address)...
SAME_WORD = 85.0
# ...or nearly when they share a stem this long (expires/expiration, cancel/cancellation, renews/renewal).
SHARED_STEM = 5
SHARED_STEM_SCORE = 0.9
# A type that only loosely carries the other's (a free-text status into a picklist, a timestamp into a
# date) makes the field a little less likely, and never an automatic mapping: values may not fit, or
# lose something, so the admin should see it.
LOOSE_TYPE_PENALTY = 0.05
LOOSE_TYPE_CAP = 0.85
PICKLIST_BONUS = 0.1
# The same values under another name still make a likely field (a "temperature" of hot/warm/cold is
# Rating): with at least this share of the app's values, and two of them, the field is worth
# suggesting however its name compares, up to PICKLIST_ALONE_BASE + PICKLIST_ALONE_SHARE.
PICKLIST_ALONE_MIN_SHARE = 0.6
PICKLIST_ALONE_BASE = 0.45
PICKLIST_ALONE_SHARE = 0.3
# Both sides list values and none agree: strong evidence of two different things with similar names.
PICKLIST_DISJOINT_PENALTY = 0.15


# Generic CRM vocabulary: a concept and the phrases either side names it by. Names and labels on both
# sides are rewritten through it before they are compared, so "zip", "Zip/Postal Code" and
# "BillingPostalCode" all come to "postalcode". Longer phrases win ("email address" is an email, not
# a street). Per-object meanings come from the labels Salesforce gives (Account's Name is labelled
# "Account Name", which is a company), not from rules here.
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "postalcode": ("zip", "zipcode", "zip code", "postcode", "post code", "postal code", "zip postal code", "postal"),
    "street": ("street", "address", "street address", "address line", "address line 1", "address 1", "line 1"),
    "city": ("city", "town", "locality"),
    "state": ("state", "region", "province", "state province", "state region", "county state"),
    "country": ("country", "nation", "country name"),
    "phone": ("phone", "telephone", "phone number", "telephone number", "work phone", "office phone", "main phone"),
    "mobilephone": ("mobile", "cell", "cellphone", "cell phone", "mobile phone", "mobile number", "cell number"),
    "fax": ("fax", "fax number"),
    "email": ("email", "e mail", "email address", "e mail address", "mail address"),
    "website": ("website", "web site", "url", "homepage", "home page", "web address", "web", "site url"),
    "firstname": ("first name", "firstname", "given name", "forename", "fname"),
    "lastname": ("last name", "lastname", "surname", "family name", "lname"),
    "salutation": ("salutation", "honorific", "name prefix"),
    "title": ("title", "job title", "position", "job position", "designation"),
    "department": ("department", "dept"),
    "birthdate": ("birthdate", "birthday", "birth date", "date of birth", "dob"),
    "company": (
        "company",
        "company name",
        "account name",
        "organisation",
        "organization",
        "organisation name",
        "business name",
    ),
    "account": ("account", "client", "customer"),
    "opportunity": ("opportunity", "deal", "opp"),
    "reportsto": ("reports to", "manager", "supervisor", "line manager"),
    "accountnumber": ("account number", "customer number", "client number"),
    "employees": (
        "employees",
        "headcount",
        "head count",
        "employee count",
        "number of employees",
        "staff",
        "staff count",
    ),
    "annualrevenue": ("revenue", "annual revenue", "yearly revenue", "turnover", "annual sales"),
    "industry": ("industry", "sector", "vertical"),
    "tickersymbol": ("ticker", "ticker symbol", "stock symbol", "stock ticker"),
    "sic": ("sic", "sic code"),
    "description": ("description", "notes", "note", "comments", "comment", "summary", "details", "about"),
    "owner": ("owner", "assigned to", "assignee", "account manager", "account owner", "sales rep", "salesperson"),
    "leadsource": ("lead source", "source", "origin", "acquisition source", "referral source"),
    "status": ("status", "lead status"),
    "rating": ("rating", "lead rating", "account rating"),
    "type": ("type", "kind"),
    "stagename": ("stage", "stage name", "deal stage", "sales stage", "pipeline stage"),
    "amount": ("amount", "deal value", "deal amount", "deal size", "opportunity amount"),
    "closedate": ("close date", "closing date", "expected close", "expected close date", "close by"),
    "probability": ("probability", "win probability", "likelihood", "win chance", "probability percent"),
    "nextstep": ("next step", "next steps", "next action"),
    "emailoptout": ("email opt out", "has opted out of email", "unsubscribed", "opted out of email"),
    "donotcall": ("do not call", "dnc"),
    "startdate": ("start date", "start", "starts", "started", "starts on", "started on", "begin date"),
    "enddate": ("end date", "end", "ends", "ended", "ends on", "ended on", "finish date"),
    "duedate": ("due date", "due", "due on", "deadline", "target date"),
}
# Shorthand, expanded word by word before the vocabulary applies.
ABBREVIATIONS: Mapping[str, str] = {
    "no": "number",
    "num": "number",
    "nbr": "number",
    "addr": "address",
    "tel": "telephone",
    "desc": "description",
    "amt": "amount",
    "qty": "quantity",
    "pct": "percent",
    "org": "organisation",
    "emp": "employees",
    "mgr": "manager",
    "yr": "year",
}
# A reference field is also named by what it points at: an app's company_id is a contact's AccountId.
REFERENCE_VOCABULARY: Mapping[str, tuple[str, ...]] = {
    "Account": ("account", "company"),
    "Contact": ("contact",),
    "User": ("user",),
}
# Words that say little: they count for a fraction of a word when names are compared. Billing and
# mailing are the default addresses of Account and Contact, so "zip" leans to them over shipping/other.
LIGHT_WORDS: Mapping[str, float] = {
    "of": 0.2,
    "the": 0.2,
    "a": 0.2,
    "is": 0.2,
    "has": 0.2,
    # A date field's name often restates its type: starts_on, Start_Date__c, signed_up_at.
    "date": 0.2,
    "at": 0.2,
    "on": 0.2,
    "billing": 0.5,
    "mailing": 0.5,
}
# Which Salesforce describe types carry an app type's values: naturally, or only loosely.
_TEXT = frozenset({"string", "textarea", "email", "phone", "url", "encryptedstring", "combobox"})
_TYPES: Mapping[FieldType, tuple[frozenset[str], frozenset[str]]] = {
    FieldType.STRING: (_TEXT, frozenset({"picklist", "multipicklist"})),
    FieldType.INT: (frozenset({"int", "long", "double"}), frozenset({"currency", "percent"})),
    FieldType.DECIMAL: (frozenset({"double", "currency", "percent"}), frozenset({"int", "long"})),
    FieldType.DOUBLE: (frozenset({"double", "currency", "percent"}), frozenset({"int", "long"})),
    FieldType.BOOL: (frozenset({"boolean"}), frozenset()),
    FieldType.DATE: (frozenset({"date"}), frozenset({"datetime"})),
    FieldType.DATETIME: (frozenset({"datetime"}), frozenset({"date"})),
    FieldType.REFERENCE: (frozenset({"reference"}), frozenset()),
    FieldType.PICKLIST: (frozenset({"picklist", "combobox"}), frozenset({"string", "textarea", "multipicklist"})),
    FieldType.MULTIPICKLIST: (frozenset({"multipicklist"}), frozenset({"string", "textarea"})),
}
_EXTERNAL_WORDS = frozenset({"external", "ext"})

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_CRM_SUFFIX = re.compile(r"__(c|r|pc|x|e|b|s|mdt|kav)$", re.IGNORECASE)


class Tier(StrEnum):
    AUTO = "auto"
    SUGGESTED = "suggested"
    UNMAPPED = "unmapped"


@dataclass(frozen=True)
class Candidate:
    salesforce: str
    confidence: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    app: str
    tier: Tier
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class _Name:
    """One way a field is called (its name, label or a referenced object's name), read two ways."""

    source: str
    words: tuple[str, ...]
    concepts: tuple[str, ...]
    # The phrase each concept was read from, for the reason shown ("synonym zip ~ PostalCode").
    phrases: tuple[tuple[str, str], ...]


def _build_phrases(synonyms: Mapping[str, tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    phrases: dict[tuple[str, ...], str] = {}
    for concept, spellings in synonyms.items():
        for spelling in (concept, *spellings):
            phrases[tuple(spelling.split())] = concept
    return phrases


_PHRASES = _build_phrases(SYNONYMS)
_LONGEST_PHRASE = max(len(p) for p in _PHRASES)


def _words(text: str) -> tuple[str, ...]:
    words = (w.lower() for w in _WORD.findall(text))
    return tuple(ABBREVIATIONS.get(w, w) for w in words)


def _crm_base(name: str) -> str:
    base = _CRM_SUFFIX.sub("", name)
    # ns__Field__c: the namespace says who made the field, not what it holds.
    return base.rsplit("__", 1)[-1]


def _read(source: str, words: tuple[str, ...], *, reference: bool) -> _Name:
    if reference and len(words) > 1 and words[-1] == "id":
        # account_id, AccountId and "Account ID" all name the account, not an id.
        words = words[:-1]
    concepts: list[str] = []
    phrases: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        for size in range(min(_LONGEST_PHRASE, len(words) - i), 0, -1):
            concept = _PHRASES.get(words[i : i + size])
            if concept is not None:
                if not concepts or concepts[-1] != concept:
                    concepts.append(concept)
                    phrases.append((concept, " ".join(words[i : i + size])))
                i += size
                break
        else:
            concepts.append(words[i])
            i += 1
    return _Name(source, words, tuple(concepts), tuple(phrases))


def _app_names(app_field: AppField) -> tuple[_Name, ...]:
    reference = app_field.type is FieldType.REFERENCE
    names = [_read("name", _words(app_field.name), reference=reference)]
    if app_field.label:
        names.append(_read("label", _words(app_field.label), reference=reference))
    return tuple(n for n in names if n.words)


def _crm_names(crm: CrmObject, crm_field: CrmField) -> tuple[_Name, ...]:
    reference = crm_field.type == "reference"
    names = [
        _read("name", _words(_crm_base(crm_field.name)), reference=reference),
        _read("label", _words(crm_field.label), reference=reference),
    ]
    if crm_field.name == "Name":
        # Every object's Name is its record's name, whatever its label says: an Opportunity's is
        # the app's deal name, an Account's its company name.
        names.append(_read("alias", (*_words(crm.label), "name"), reference=False))
    if reference:
        for target in crm_field.reference_to:
            names += [_read("alias", (word,), reference=False) for word in REFERENCE_VOCABULARY.get(target, ())]
    return tuple(n for n in names if n.words)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _word_match(a: str, b: str) -> float:
    if a == b or _stem(a) == _stem(b):
        return 1.0
    if a.isdigit() or b.isdigit():
        return 0.0
    ratio = fuzz.ratio(a, b)
    if ratio >= SAME_WORD:
        return ratio / 100
    shared = Prefix.similarity(a, b)
    return SHARED_STEM_SCORE if shared >= SHARED_STEM and shared >= 0.7 * min(len(a), len(b)) else 0.0


def _similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Weighted Dice over words matched one to one; light words count for little either way."""
    if a == b:
        return 1.0
    weight_a = sum(LIGHT_WORDS.get(w, 1.0) for w in a)
    weight_b = sum(LIGHT_WORDS.get(w, 1.0) for w in b)
    unmatched = list(b)
    matched = 0.0
    for word in a:
        best, best_at = 0.0, -1
        for at, other in enumerate(unmatched):
            score = _word_match(word, other)
            if score > best:
                best, best_at = score, at
        if best_at >= 0:
            other = unmatched.pop(best_at)
            matched += best * min(LIGHT_WORDS.get(word, 1.0), LIGHT_WORDS.get(other, 1.0))
    dice = 2 * matched / (weight_a + weight_b) if weight_a + weight_b else 0.0
    # Run together, the names still catch what splitting into words loses (a misspelt word, "zipcode").
    whole = fuzz.ratio("".join(a), "".join(b)) / 100
    return max(dice, whole * 0.95 if whole >= SAME_WORD / 100 else 0.0)


def _name_evidence(
    app_names: tuple[_Name, ...], crm_names: tuple[_Name, ...], crm_field: CrmField
) -> tuple[float, str]:
    """The best similarity of any of the app field's names to any of the Salesforce field's, and why."""
    best = (0.0, "")
    for app_name in app_names:
        for crm_name in crm_names:
            score = _similarity(app_name.concepts, crm_name.concepts)
            if crm_name.source == "alias":
                score *= ALIAS_WEIGHT
            if score > best[0]:
                best = (score, _name_reason(app_name, crm_name, crm_field, score))
    return best


def _name_reason(app_name: _Name, crm_name: _Name, crm_field: CrmField, score: float) -> str:
    if app_name.words == crm_name.words and crm_name.source != "alias":
        return f"{app_name.source} matches"
    crm_phrases = dict(crm_name.phrases)
    for concept, phrase in app_name.phrases:
        if concept in crm_phrases and crm_phrases[concept] != phrase:
            return f"synonym {phrase} ~ {crm_field.name}"
    if crm_name.source == "alias":
        return f"refers to {' '.join(crm_name.words)}"
    return f"{app_name.source} similar {score:.2f}"


def _picklist_overlap(app_field: AppField, crm_field: CrmField) -> tuple[int, int] | None:
    active = [p for p in crm_field.picklist if p.active]
    if not app_field.picklist or not active:
        return None
    known = {_token(p.value) for p in active} | {_token(p.label) for p in active}
    matched = 0
    for value in app_field.picklist:
        token = _token(value)
        if token in known or any(fuzz.ratio(token, k) >= SAME_WORD + 5 for k in known):
            matched += 1
    return matched, len(app_field.picklist)


def _token(value: str) -> str:
    return "".join(ch for ch in value.lower() if ch.isalnum())


def _is_candidate(app_field: AppField, crm_field: CrmField, taken: Collection[str]) -> bool:
    if (
        not crm_field.writable
        or crm_field.name.lower() in SALESFORCE_READ_ONLY_FIELDS
        or crm_field.name.lower() in taken
    ):
        return False
    if crm_field.external_id:
        # An external id identifies records for upserts; a field maps to it only when it says so.
        words = set(_words(app_field.name))
        return bool(words & _EXTERNAL_WORDS) or _words(app_field.name) == _words(_crm_base(crm_field.name))
    return True


def _score(
    app_field: AppField, app_names: tuple[_Name, ...], crm_field: CrmField, crm_names: tuple[_Name, ...]
) -> Candidate | None:
    natural, loose = _TYPES.get(app_field.type, (frozenset(), frozenset()))
    if crm_field.type not in natural and crm_field.type not in loose:
        return None
    similarity, reason = _name_evidence(app_names, crm_names, crm_field)
    confidence = similarity
    reasons = [reason] if reason else []
    if crm_field.type in natural:
        reasons.append("types compatible")
    else:
        confidence = min(confidence - LOOSE_TYPE_PENALTY, LOOSE_TYPE_CAP)
        reasons.append(f"types loosely compatible ({app_field.type} → {crm_field.type})")
    overlap = _picklist_overlap(app_field, crm_field)
    if overlap is not None:
        matched, total = overlap
        if matched:
            share = matched / total
            confidence += PICKLIST_BONUS * share
            if share >= PICKLIST_ALONE_MIN_SHARE and matched >= 2:
                confidence = max(confidence, PICKLIST_ALONE_BASE + PICKLIST_ALONE_SHARE * share)
        else:
            confidence -= PICKLIST_DISJOINT_PENALTY
        reasons.append(f"picklist values overlap {matched}/{total}")
    confidence = round(min(max(confidence, 0.0), 1.0), 2)
    if confidence < LISTED_CONFIDENCE:
        return None
    return Candidate(crm_field.name, confidence, tuple(reasons))


def _tier(candidates: list[Candidate]) -> Tier:
    if not candidates:
        return Tier.UNMAPPED
    best = candidates[0].confidence
    runner_up = candidates[1].confidence if len(candidates) > 1 else 0.0
    if best >= AUTO_CONFIDENCE and best - runner_up >= AUTO_MARGIN:
        return Tier.AUTO
    return Tier.SUGGESTED if best >= SUGGESTED_CONFIDENCE else Tier.UNMAPPED


def suggest(app: AppObject, crm: CrmObject, *, taken: Collection[str] = ()) -> list[Suggestion]:
    """One suggestion per app field, in the app's order.

    ``taken`` names Salesforce fields already mapped (in any case); they are no candidates. The same
    inputs give the same suggestions: candidates of equal confidence are ordered by name, and of two
    equally confident automatic claims on one field the app field declared first wins.
    """
    taken_lower = {name.lower() for name in taken}
    crm_names = {f.name: _crm_names(crm, f) for f in crm.fields}
    ranked: dict[str, list[Candidate]] = {}
    for app_field in app.fields:
        app_names = _app_names(app_field)
        scored = (
            _score(app_field, app_names, crm_field, crm_names[crm_field.name])
            for crm_field in crm.fields
            if _is_candidate(app_field, crm_field, taken_lower)
        )
        ranked[app_field.name] = sorted((c for c in scored if c), key=lambda c: (-c.confidence, c.salesforce))

    # An automatic mapping claims its Salesforce field for good, so two app fields never both get it:
    # the most confident claim wins, and every other field reads its list without that field, which
    # may leave it a weaker tier (or, its rival gone, a clear winner of its own).
    order = {f.name: i for i, f in enumerate(app.fields)}
    auto: set[str] = set()
    while True:
        claims = [name for name, cands in ranked.items() if name not in auto and _tier(cands) is Tier.AUTO]
        if not claims:
            break
        winner = min(claims, key=lambda name: (-ranked[name][0].confidence, order[name]))
        auto.add(winner)
        claimed = ranked[winner][0].salesforce
        for name, cands in ranked.items():
            if name not in auto:
                ranked[name] = [c for c in cands if c.salesforce != claimed]

    return [
        Suggestion(
            app=f.name,
            tier=Tier.AUTO if f.name in auto else _tier(ranked[f.name]),
            candidates=tuple(ranked[f.name][:MAX_CANDIDATES]),
        )
        for f in app.fields
    ]
