"""An embedded Salesforce org for development, demos, CI and offline staging.

Speaks Salesforce's own wire formats (REST, OAuth 2.0, SOAP login, Bulk API 2.0, Pub/Sub API with
Avro CDC events) so that third-party Salesforce clients work against it unchanged.
"""
