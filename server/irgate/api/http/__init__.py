"""The HTTP/JSON front (`--http-port`): irgate's own API in protobuf JSON and the dialects retrieval
clients speak (OpenAI embeddings, Cohere and Jina rerank, text-embeddings-inference), each call
served by the same gRPC servicers."""

from irgate.api.http.app import HttpFront
from irgate.api.http.services import HttpServices

__all__ = ["HttpFront", "HttpServices"]
