"""The definition index: tree-sitter on each language, the pattern fallback, update/remove, bounds,
the background build's progress, and privacy."""
from __future__ import annotations

from pathlib import Path

from fim_lsp.context import DefinitionIndex, IndexBounds, IndexProgress, Privacy
from fim_lsp.context.definitions import find_definitions

PY = '''import os

LIMIT = 10
a, b = 1, 2


@cache
def load(path):
    """Read it."""
    def inner():
        hidden = 1
    return open(path).read()


class Store:
    size: int = 3

    def put(self, key):
        local_var = key
        return local_var

if os.name == "nt":
    def windows_only():
        pass
'''

JS = '''import { x } from "./x";
export function render(node) {
  function nested() {}
  const inside = 1;
}
class Widget {
  draw() { return 1; }
}
const makeId = () => 1, counter = 0;
export default class Page {}
let { a, b } = obj;
'''

TS = '''export interface Shape { area(): number }
type Id = string;
enum Color { Red }
export const unit: number = 1;
abstract class Base { abstract run(): void; }
export function area(s: Shape): number { return s.area(); }
'''

JAVA = '''package demo;
public class Account {
    private static final int LIMIT = 5;
    public Account() {}
    public int balance(int x) { int local = x; return local; }
    interface Listener { void on(); }
    enum Kind { A, B }
    record Point(int x, int y) {}
}
'''

GO = '''package main

type Server struct {
    port int
}

func (s *Server) Start() error {
    return nil
}

func helper() {}
'''

RUST = '''pub struct Config {
    pub name: String,
}

impl Config {
    pub fn new() -> Self {
        Config { name: String::new() }
    }
}

pub(crate) async fn fetch() {}
'''


def names(path: str, text: str) -> list[tuple[str, int, int]]:
    return [(d.name, d.start_line, d.end_line) for d in find_definitions(path, text)]


def test_python_definitions_with_tree_sitter() -> None:
    assert names("m.py", PY) == [("LIMIT", 2, 3), ("load", 6, 12), ("Store", 14, 20), ("size", 15, 16),
                                 ("put", 17, 20), ("windows_only", 22, 24)]
    (load,) = [d for d in find_definitions("m.py", PY) if d.name == "load"]
    assert load.text.startswith("@cache\ndef load(path):") and load.kind == "function_definition"


def test_javascript_and_typescript_definitions() -> None:
    assert [n for n, _, _ in names("a.js", JS)] == ["render", "Widget", "draw", "makeId", "counter", "Page"]
    assert names("a.js", JS)[0] == ("render", 1, 5)  # `export` included, nested names not taken
    assert [n for n, _, _ in names("a.ts", TS)] == ["Shape", "area", "Id", "Color", "unit", "Base", "run", "area"]
    assert [n for n, _, _ in names("a.tsx", "export const App = () => <div/>;\n")] == ["App"]


def test_java_definitions() -> None:
    assert [n for n, _, _ in names("A.java", JAVA)] == ["Account", "LIMIT", "balance", "Listener", "on", "Kind",
                                                        "Point"]


def test_fallback_patterns_for_other_languages() -> None:
    assert names("main.go", GO) == [("Server", 2, 5), ("Start", 6, 9), ("helper", 10, 11)]
    assert names("lib.rs", RUST) == [("Config", 0, 3), ("Config", 4, 9), ("new", 5, 8), ("fetch", 10, 11)]
    assert names("notes.txt", "def not_code(): pass\n") == []  # no grammar, no fallback: not indexed


def workspace(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_index_build_lookup_update_remove(tmp_path: Path) -> None:
    root = workspace(tmp_path, {"app/models.py": "class User:\n    pass\n", "web/ui.js": JS, ".gitignore": "gen/\n",
                                "gen/auto.py": "def generated(): pass\n", ".env.py": "def secret_fn(): pass\n"})
    index = DefinitionIndex(Privacy([root]))
    progress = index.build()
    assert progress == IndexProgress(files_done=2, files_total=2, definitions=7, finished=True)
    (user,) = index.lookup("User")
    assert user.path == root / "app/models.py" and user.definition.text == "class User:\n    pass"
    assert index.lookup("generated") == () and index.lookup("secret_fn") == ()  # only what privacy allows

    (root / "app/models.py").write_text("class Account:\n    pass\n")
    index.update(root / "app/models.py")
    assert index.lookup("User") == () and len(index.lookup("Account")) == 1
    index.update(root / "app/new.py")  # created: update indexes it
    assert index.lookup("Account")[0].path == root / "app/models.py"
    (root / "app/new.py").write_text("def fresh(): pass\n")
    index.update(root / "app/new.py")
    assert len(index.lookup("fresh")) == 1
    index.remove(root / "app/new.py")
    assert index.lookup("fresh") == () and index.files() == 2

    # a file that becomes ignored leaves the index on its next update
    (root / ".gitignore").write_text("gen/\napp/\n")
    index.update(root / ".gitignore")
    index.update(root / "app/models.py")
    assert index.lookup("Account") == ()


def test_a_name_many_files_define_keeps_the_other_files_entries(tmp_path: Path) -> None:
    """Updating or removing one file drops its own entries of a shared name (`__init__`, `run`) and
    no one else's, and the memory count returns to what the files hold."""
    body = "class A{i}:\n    def __init__(self):\n        self.v = {i}\n"
    root = workspace(tmp_path, {f"m{i}.py": body.format(i=i) for i in range(5)})
    index = DefinitionIndex(Privacy([root]))
    index.build()
    memory = index.memory_bytes()
    assert sorted(item.path.name for item in index.lookup("__init__")) == [f"m{i}.py" for i in range(5)]
    (root / "m2.py").write_text(body.format(i=2) + "    def __init__(self, x):\n        self.v = x\n")
    index.update(root / "m2.py")
    assert sorted(item.path.name for item in index.lookup("__init__")) == ["m0.py", "m1.py", "m2.py", "m2.py",
                                                                          "m3.py", "m4.py"]
    index.remove(root / "m2.py")
    assert sorted(item.path.name for item in index.lookup("__init__")) == ["m0.py", "m1.py", "m3.py", "m4.py"]
    (root / "m2.py").write_text(body.format(i=2))
    index.update(root / "m2.py")
    assert index.memory_bytes() == memory and len(index.lookup("__init__")) == 5
    for i in range(5):
        index.remove(root / f"m{i}.py")
    assert index.lookup("__init__") == () and index.lookup("A0") == () and index.memory_bytes() == 0


def test_bounds_stop_the_build_and_say_which(tmp_path: Path) -> None:
    files = {f"m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(10)}
    root = workspace(tmp_path, files)
    by_files = DefinitionIndex(Privacy([root]), IndexBounds(max_files=4))
    p = by_files.build()
    assert (p.files_done, by_files.files(), p.stopped_by) == (4, 4, "max_files (4)")
    size = len(files["m0.py"])
    by_bytes = DefinitionIndex(Privacy([root]), IndexBounds(max_read_bytes=3 * size))
    p = by_bytes.build()
    assert (by_bytes.files(), p.stopped_by) == (3, f"max_read_bytes ({3 * size})")
    entry = len("def f0():\n    return 0") + 200
    by_memory = DefinitionIndex(Privacy([root]), IndexBounds(max_memory_bytes=5 * entry))
    p = by_memory.build()
    assert by_memory.files() == 5 and by_memory.memory_bytes() <= 5 * entry
    assert p.stopped_by == f"max_memory_bytes ({5 * entry})"
    # a file too big for the privacy cap is never read at all
    (root / "huge.py").write_text("def big():\n    pass\n" + "x = 1\n" * 300_000)
    capped = DefinitionIndex(Privacy([root], max_file_bytes=100_000))
    capped.build()
    assert capped.lookup("big") == () and len(capped.lookup("f3")) == 1


def test_background_build_reports_progress(tmp_path: Path) -> None:
    root = workspace(tmp_path, {f"pkg/m{i}.py": f"def g{i}(): pass\n" for i in range(30)})
    index = DefinitionIndex(Privacy([root]))
    reports: list[IndexProgress] = []
    index.start(reports.append)
    assert index.wait(30)
    assert reports[-1] == IndexProgress(30, 30, 30, True) and index.progress == reports[-1]
    assert all(not r.finished for r in reports[:-1])
    assert len(index.lookup("g29")) == 1


def test_a_symlink_loop_or_a_broken_link_in_the_workspace_does_not_stop_the_build(tmp_path: Path) -> None:
    """Resolving a link that loops raises (RuntimeError on Python 3.11, OSError later): such a file is
    refused like any other that cannot be read, and the build goes on to the files after it."""
    root = workspace(tmp_path, {"a.py": "def before_fn(): pass\n", "z.py": "def after_fn(): pass\n"})
    (root / "l1.py").symlink_to("l2.py")
    (root / "l2.py").symlink_to("l1.py")
    (root / "self.py").symlink_to("self.py")
    (root / "dangling.py").symlink_to("missing.py")
    privacy = Privacy([root])
    assert not privacy.allows(root / "l1.py") and privacy.refusal(root / "self.py") is not None
    index = DefinitionIndex(privacy)
    progress = index.build()
    assert progress.finished and progress.stopped_by is None
    assert len(index.lookup("before_fn")) == 1 and len(index.lookup("after_fn")) == 1
    index.update(root / "l1.py")  # a watched-file event for it: nothing to index, no error
    assert index.files() == 2
