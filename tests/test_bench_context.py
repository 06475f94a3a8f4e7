"""The context benchmark on a small tree whose answers are known: both holes use names imported from
another file, so the definitions strategy must find both and the local window neither."""
from __future__ import annotations

from pathlib import Path

from fim_lsp.bench.context import main, run_package
from fim_lsp.bench.context_holes import python_files, sample_holes

A = '''class Widget:
    size = 3


def compute_total(items):
    """Sum them."""
    return sum(items)
'''
B = '''from pkg.a import compute_total, Widget


def run(items):
    w = Widget()
    # compute_total in a comment is no hole
    return compute_total(items) + w.size
'''


def tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text(A)
    (root / "pkg" / "b.py").write_text(B)
    return root


def test_holes_are_uses_of_names_defined_in_one_other_file(tmp_path: Path) -> None:
    root = tree(tmp_path)
    holes = sample_holes(python_files(root), 10, seed=0)
    assert sorted((h.path.name, h.line, h.column, h.name, h.definition.header) for h in holes) == [
        ("b.py", 4, 8, "Widget", "class Widget:"),
        ("b.py", 6, 11, "compute_total", "def compute_total(items):")]


def test_recall_per_strategy_on_known_holes(tmp_path: Path, shared_data: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "qwen2.5-coder"))
    root = tree(tmp_path)
    r = run_package("pkg", root, tok, 10, 0, open_count=0, edit_count=0, dllm_ns=[0, 512], totals=[4096])
    assert r.holes == 2
    assert r.qwen_hits == {"local": 0, "+open": 0, "+defs": 2, "+edits": 2}
    assert r.dllm_hits == {0: 0, 512: 2} and r.total_hits == {4096: 2}
    assert len(r.gather_ms) == len(r.gather_warm_ms) == len(r.prompt_warm_ms) == 2


def test_the_command_prints_the_table(tmp_path: Path, shared_data: Path, capsys) -> None:
    root = tree(tmp_path)
    assert main(["--root", str(root), "--holes", "5", "--data-dir", str(shared_data), "--dllm-context", "512",
                 "--totals", "4096", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "| +defs | " in out and "| 100.0% |" in out and "| diffusion, N = 512 | 100.0% | 100.0% |" in out
    assert (tmp_path / "out.json").is_file()
