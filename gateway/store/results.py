"""Search results as JSON text, kept per stored dataset and projection.

Performers poll the same worklist over and over (scenario 3 of the benchmarks: 32 performers,
≈50 results a search, most of them the same workitems as the search before), and every result
costs decompressing its stored dataset, keeping the members the query returns and joining them
(≈60 % of a search's CPU). A stored dataset's bytes change with every change of its workitem, so
the rendered text is kept under the stored bytes themselves: an entry can never be stale, a
changed workitem simply is not found, and several gateway processes need no invalidation.
Entries are dropped oldest first once the size budget is reached.
"""

from __future__ import annotations

from typing import Callable, Hashable

from gateway.store.codec import RawDataset, render, unpack_raw

Projector = Callable[[RawDataset], RawDataset]

_ENTRY_OVERHEAD = 200  # bytes per entry beyond the two byte strings (dict slot, tuple, headers)


class RenderedResults:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: dict[tuple[Hashable, bytes], bytes] = {}
        self._size = 0

    def render(self, blob: bytes, projection: Hashable, project: Projector) -> bytes:
        """``blob`` (a stored dataset) projected by ``project`` as JSON text; ``projection``
        names what ``project`` keeps (equal names, equal projections)."""
        key = (projection, blob)
        text = self._entries.get(key)
        if text is None:
            text = render(project(unpack_raw(blob)))
            self._keep(key, text)
        return text

    def _keep(self, key: tuple[Hashable, bytes], text: bytes) -> None:
        size = len(key[1]) + len(text) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._size += size
        entries = self._entries
        entries[key] = text
        while self._size > self.max_bytes:
            old_key = next(iter(entries))
            self._size -= len(old_key[1]) + len(entries.pop(old_key)) + _ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size
