"""Project context: what the models may see of the project beyond the cursor's window, and what never
reaches them. Independent of the server (no LSP types): the server feeds it documents, edits and file
events, and puts its `ProjectContext` on each request.

- `Privacy`: the one place that decides whether a path, or an open document's text, may reach a prompt.
- `EditTracker`: recently edited ranges, from didChange.
- `DefinitionIndex`: the workspace's definitions, built in the background, kept current per file.
- `ContextGatherer.gather(Cursor, open_docs)`: a request's `ProjectContext`, within a deadline."""
from .edits import EditedRange, EditTracker
from .gather import ContextGatherer, Cursor
from .index import DefinitionIndex, IndexBounds, IndexProgress
from .privacy import Place, Privacy
from .settings import ContextSettings

__all__ = ["ContextGatherer", "ContextSettings", "Cursor", "DefinitionIndex", "EditTracker", "EditedRange",
           "IndexBounds", "IndexProgress", "Place", "Privacy"]
