"""The HTTP client of a domain, for every role."""

from fednb.client._client import DatasetHandle, DomainClient, connect
from fednb.client._handles import RemoteRequest, RemoteRun
from fednb.client._http import is_loopback
from fednb.client._secagg import RemoteSecAggPeer

__all__ = ["DatasetHandle", "DomainClient", "RemoteRequest", "RemoteRun", "RemoteSecAggPeer", "connect",
           "is_loopback"]
