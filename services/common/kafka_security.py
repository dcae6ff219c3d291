"""How every Kafka client of Duplex proves who it is and checks whom it talks to.

One :class:`faststream.security.BaseSecurity` is built from :class:`KafkaSettings`; faststream's
broker takes it as it is, and the plain aiokafka clients (topic administration, the admin API's
dead letters) take the keyword arguments faststream itself derives from it, so the two can never
disagree.
"""

from __future__ import annotations

import ssl
from typing import Any

from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.common.settings import KafkaSettings

_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Brokers' certificates checked against ``ssl_ca_file`` (else the system's CAs), host names
    too; the client's own certificate presented when one is configured."""
    context = ssl.create_default_context(cafile=settings.ssl_ca_file)
    if settings.ssl_cert_file and settings.ssl_key_file:
        context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
    return context


def security(settings: KafkaSettings) -> BaseSecurity | None:
    """What faststream's broker takes; None for PLAINTEXT."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = tls_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context)
    assert settings.sasl_username is not None  # checked by KafkaSettings
    assert settings.sasl_password is not None
    return _SASL[settings.sasl_mechanism](
        settings.sasl_username,
        settings.sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=context is not None,
    )


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The same, as keyword arguments of aiokafka's clients."""
    options: dict[str, Any] = parse_security(security(settings))
    return options
