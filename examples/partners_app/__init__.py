"""An example internal service: a partner directory that syncs with Salesforce through Duplex.

It uses only Duplex's public contract (the ``duplex.change.v1.RecordChanged`` protobuf on the
``app-changes`` and ``app-updates`` topics, see ``docs/app-contract.md``): no Duplex code.
"""
