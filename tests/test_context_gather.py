"""Gathering: the edit tracker, similarity ranking, near-duplicate eviction, definitions from the
index, the stable order, the deadline, and closing a document."""
from __future__ import annotations

from pathlib import Path

from fim_lsp.context import ContextGatherer, ContextSettings, Cursor, DefinitionIndex, EditTracker, Privacy
from fim_lsp.context.similarity import identifiers, jaccard


def spans(tracker: EditTracker) -> list[tuple[str, int, int]]:
    return [(r.path, r.start_line, r.end_line) for r in tracker.recent()]


def test_edits_newest_first_shifted_joined_and_bounded() -> None:
    t = EditTracker(max_ranges=3, join_lines=2, max_range_lines=10)
    t.record("a", 10, 10, "x")  # typed on line 10
    t.record("b", 5, 5, "y")
    assert spans(t) == [("b", 5, 6), ("a", 10, 11)]
    t.record("a", 11, 11, "z")  # the next line: joins the range, which becomes the newest
    assert spans(t) == [("a", 10, 12), ("b", 5, 6)]
    t.record("a", 0, 0, "one\ntwo\nthree\n")  # three lines inserted above: the held range moves down
    assert spans(t) == [("a", 0, 3), ("a", 13, 15), ("b", 5, 6)]
    t.record("a", 1, 3, "")  # lines 1-2 and the line break of 2 deleted (a range's end line is inclusive)
    assert spans(t) == [("a", 0, 2), ("a", 11, 13), ("b", 5, 6)]
    t.record("c", 0, 0, "new")
    assert spans(t) == [("c", 0, 1), ("a", 0, 2), ("a", 11, 13)]  # the oldest went
    t.forget("a")
    assert spans(t) == [("c", 0, 1)]


def test_a_growing_range_stops_joining_at_its_cap() -> None:
    t = EditTracker(join_lines=1, max_range_lines=4)
    for line in range(6):
        t.record("a", line, line, "x")
    assert spans(t) == [("a", 4, 6), ("a", 0, 4)]


def test_full_document_changes_find_the_changed_lines() -> None:
    t = EditTracker()
    old = "a\nb\nc\nd\ne\n"
    t.record_full("doc", old, "a\nb\nC changed\nd\ne\n")
    assert spans(t) == [("doc", 2, 3)]
    t.record_full("doc", "a\nb\nC changed\nd\ne\n", "a\nb\nC changed\nd\ne\n")  # no change, no range
    assert spans(t) == [("doc", 2, 3)]
    t2 = EditTracker()
    t2.record_full("doc", old, "a\nb\nc\nnew 1\nnew 2\nd\ne\n")
    assert spans(t2) == [("doc", 3, 5)]


def test_jaccard_of_identifiers() -> None:
    a, b = identifiers("user_id = lookup(user_name) + x"), identifiers("lookup(user_id, other)")
    assert a == {"user_id", "lookup", "user_name"}  # one-letter names left out
    assert jaccard(a, b) == 2 / 4 and jaccard(a, frozenset()) == 0.0


def workspace(root: Path, files: dict[str, str]) -> dict[Path, str]:
    out = {}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        out[root / rel] = text
    return out


CURSOR = "def total(order):\n    price = order.price * order.quantity\n    discount = "


def test_open_files_ranked_by_similarity_and_near_duplicates_evicted(tmp_path: Path) -> None:
    docs = workspace(tmp_path, {
        "close.py": "def apply_discount(order, price):\n    return price * order.quantity - order.discount\n",
        "copy.py": "def apply_discount(order, price):\n    return price * order.quantity - order.discount\n\n",
        "middle.py": "def describe(order):\n    return str(order)\n",
        "far.py": "import os\nprint(os.getcwd())\n",
        "main.py": CURSOR})
    main = tmp_path / "main.py"
    g = ContextGatherer(Privacy([tmp_path]), settings=ContextSettings(context_same_file=False))
    context = g.gather(Cursor(main, CURSOR, 2, (0, 3)), docs)
    # copy.py is close.py again (identifiers alike beyond 0.9): one of the two is evicted;
    # far.py shares no identifier with the cursor's text: not a candidate at all
    assert [c.path for c in context.chunks] in (["close.py", "middle.py"], ["copy.py", "middle.py"])
    close, middle = context.chunks
    assert close.score > middle.score > 1.0 and close.source == "open-file"
    # with room for one chunk the most similar is the one kept
    one = ContextGatherer(Privacy([tmp_path]), settings=ContextSettings(context_same_file=False, context_max_chunks=1))
    assert [c.path for c in one.gather(Cursor(main, CURSOR, 2, (0, 3)), docs).chunks] == [close.path]


def test_definitions_of_names_near_the_cursor_from_unopened_files(tmp_path: Path) -> None:
    docs = workspace(tmp_path, {
        "billing/rates.py": "def tax_rate(region):\n    return 0.2\n\n\ndef shipping(region):\n    return 5\n",
        "billing/other.py": "def shipping_cost(x):\n    return x\n",
        "many/a.py": "def save(): pass\n", "many/b.py": "def save(): pass\n", "many/c.py": "def save(): pass\n",
        "many/d.py": "def save(): pass\n", "many/e.py": "def save(): pass\n",
        "shapes.py": "class Box:\n    rate: float = 0.5\n", "rates.py": "rate = 0.7\n",
        "tools.py": "def rate(cart):\n    return 1\n",
        "app.py": ("from billing.rates import tax_rate\n\n\ndef local_helper():\n    pass\n\n\n"
                   "def checkout(cart, region):\n    local_helper()\n    save()\n    rate = ")})
    app = tmp_path / "app.py"
    privacy = Privacy([tmp_path])
    index = DefinitionIndex(privacy)
    index.build()
    g = ContextGatherer(privacy, EditTracker(), index, ContextSettings(context_open_files=False,
                                                                          context_same_file=False))
    text = docs[app]
    context = g.gather(Cursor(app, text, 11, (7, 12)), {app: text})
    # tax_rate: imported; save: five definitions, too ambiguous; local_helper: the file's own; rate: the
    # function, not the field or the variable of the same name, and first: it is on the cursor's line
    assert [(c.path, c.start_line, c.end_line, c.source) for c in context.chunks] == \
        [("tools.py", 0, 2, "definition"), ("billing/rates.py", 0, 2, "definition")]
    assert context.chunks[1].text == "def tax_rate(region):\n    return 0.2"
    assert context.chunks[0].score > context.chunks[1].score
    assert context.repo == tmp_path.name and context.path == "app.py"


def test_recent_edits_of_open_documents_and_closing_takes_them_out(tmp_path: Path) -> None:
    other_text = "".join(f"line_{i} = {i}\n" for i in range(100))
    docs = workspace(tmp_path, {"other.py": other_text, "main.py": CURSOR})
    main, other = tmp_path / "main.py", tmp_path / "other.py"
    edits = EditTracker()
    edits.record(other, 50, 50, "line_50 = 'edited'")
    edits.record(main, 0, 0, "def")  # inside the cursor's local window: nothing to add
    g = ContextGatherer(Privacy([tmp_path]), edits, settings=ContextSettings(context_open_files=False))
    context = g.gather(Cursor(main, CURSOR, 2, (0, 3)), docs)
    assert [(c.path, c.start_line, c.end_line, c.source) for c in context.chunks] == [("other.py", 48, 53, "edit")]
    assert "line_50 = 50" in context.chunks[0].text
    del docs[other]  # closed (the server also forgets its edits)
    assert g.gather(Cursor(main, CURSOR, 2, (0, 3)), docs).chunks == ()


def test_same_file_chunks_outside_the_window(tmp_path: Path) -> None:
    lines = [f"def step_{i}(order):\n    return order.price + {i}" for i in range(40)]
    text = "\n".join(lines) + "\n" + CURSOR
    main = workspace(tmp_path, {"main.py": text})
    path = tmp_path / "main.py"
    n = text.count("\n")
    g = ContextGatherer(Privacy([tmp_path]), settings=ContextSettings(context_chunk_lines=16))
    context = g.gather(Cursor(path, text, n, (n - 20, n + 1)), main)
    assert context.chunks and all(c.source == "same-file" and c.end_line <= n - 20 for c in context.chunks)


def test_order_is_by_first_sight_and_a_chunk_that_leaves_comes_back_last(tmp_path: Path) -> None:
    docs = workspace(tmp_path, {"a.py": "price = order.price\n", "b.py": "quantity = order.quantity\n",
                                "main.py": CURSOR})
    main = tmp_path / "main.py"
    g = ContextGatherer(Privacy([tmp_path]), settings=ContextSettings(context_same_file=False))
    cursor = Cursor(main, CURSOR, 2, (0, 3))
    first = g.gather(cursor, {main: CURSOR, tmp_path / "a.py": docs[tmp_path / "a.py"]})
    assert [c.path for c in first.chunks] == ["a.py"]
    both = g.gather(cursor, docs)
    assert [c.path for c in both.chunks] == ["a.py", "b.py"]  # b.py is appended whatever its score
    assert [c.path for c in g.gather(cursor, docs).chunks] == ["a.py", "b.py"]  # and stays there
    g.gather(cursor, {main: CURSOR, tmp_path / "b.py": docs[tmp_path / "b.py"]})  # a.py closed
    assert [c.path for c in g.gather(cursor, docs).chunks] == ["b.py", "a.py"]  # reopened: last


def test_documents_missed_by_the_deadline_are_used_by_the_next_request(tmp_path: Path) -> None:
    docs = workspace(tmp_path, {f"m{i}.py": f"order_{i} = order.price * {i}\n" for i in range(3)} | {"main.py": CURSOR})
    main = tmp_path / "main.py"
    g = ContextGatherer(Privacy([tmp_path]), settings=ContextSettings(context_same_file=False))
    cursor = Cursor(main, CURSOR, 2, (0, 3))
    # a deadline already past: each request cuts one new document, and keeps what earlier ones cut
    assert [len(g.gather(cursor, docs, deadline_ms=0).chunks) for _ in range(4)] == [1, 2, 3, 3]


def test_off_switch_and_refused_cursor_file(tmp_path: Path) -> None:
    docs = workspace(tmp_path, {"main.py": CURSOR, "a.py": "price = order.price\n", ".env.local": CURSOR})
    privacy = Privacy([tmp_path])
    off = ContextGatherer(privacy, settings=ContextSettings(project_context=False))
    assert off.gather(Cursor(tmp_path / "main.py", CURSOR, 2), docs) is None
    on = ContextGatherer(privacy)
    assert on.gather(Cursor(tmp_path / ".env.local", CURSOR, 2), docs) is None
    assert on.gather(Cursor(tmp_path.parent / "elsewhere.py", CURSOR, 2), docs) is None
    assert on.gather(Cursor(tmp_path / "main.py", CURSOR, 2), docs) is not None


def test_readme_documents_every_context_setting_with_its_default() -> None:
    import dataclasses
    import json
    import re

    from fim_lsp.engine.config import camel
    from fim_lsp.engine.requests import BUDGET_SETTINGS, PromptBudget

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.M))
    want = {camel(f.name): f.default for f in dataclasses.fields(ContextSettings)}
    want |= {BUDGET_SETTINGS[f.name]: f.default for f in dataclasses.fields(PromptBudget)}
    for key, default in want.items():
        assert key in rows, f"{key} is not documented"
        assert json.loads(rows[key]) == (list(default) if isinstance(default, tuple) else default), key
