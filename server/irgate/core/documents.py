"""Kept for core.search, which imports Document from here: the type is irgate.domain.documents.Document."""

from irgate.domain.documents import Document as Document
