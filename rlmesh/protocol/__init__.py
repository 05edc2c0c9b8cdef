"""The request/reply protocol: message layout and error kinds, addresses, the client's
connection and the server's endpoint loop.

The message vocabulary is importable from here; connections and endpoints from their modules.
"""

from rlmesh.protocol.messages import (
    MODEL_KIND,
    PROTOCOL_GENERATION,
    REPLY_FIELDS,
    EnvContract,
    ErrorKind,
    Request,
)

__all__ = ["PROTOCOL_GENERATION", "EnvContract", "Request", "ErrorKind", "REPLY_FIELDS", "MODEL_KIND"]
