"""`SearchResult`: one hit of a search, as every index (`AudioIndex`, `QdrantIndex`) returns it."""

from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """One hit: the file, its score, its row, the matched chunk's extent (start, end) s and every stretch it packs."""

    path: str
    score: float
    index: int
    start: float | None = None
    end: float | None = None
    name: str = ""
    chunk: int | None = None
    chunk_score: float | None = None
    spans: list = field(default_factory=list)
