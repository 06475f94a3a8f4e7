"""Privacy: which paths and texts may reach a prompt, on real files and folders (gitignore rules
through pathspec, symlinks, binaries, the size cap, secret names, the user's excludes)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fim_lsp.context import Privacy


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return root


def refused(privacy: Privacy, root: Path, rel: str) -> str | None:
    return privacy.refusal(root / rel)


def test_gitignore_negation_and_ignored_folders(tmp_path: Path) -> None:
    root = tree(tmp_path, {".gitignore": "*.log\n!keep.log\nbuild/\n!build/wanted.py\n/top_only.py\n",
                           "a.log": "x", "keep.log": "x", "sub/b.log": "x", "sub/keep.log": "x",
                           "build/gen.py": "x", "build/wanted.py": "x", "src/build/deep.py": "x",
                           "top_only.py": "x", "sub/top_only.py": "x", "ok.py": "x"})
    p = Privacy([root])
    assert refused(p, root, "a.log") == "ignored by git"
    assert refused(p, root, "sub/b.log") == "ignored by git"
    assert refused(p, root, "keep.log") is None and refused(p, root, "sub/keep.log") is None  # negation
    assert refused(p, root, "build/gen.py") == "ignored by git"
    assert refused(p, root, "src/build/deep.py") == "ignored by git"  # `build/` matches at any depth
    # git never re-includes a file whose folder is excluded
    assert refused(p, root, "build/wanted.py") == "ignored by git"
    assert refused(p, root, "top_only.py") == "ignored by git" and refused(p, root, "sub/top_only.py") is None
    assert p.allows(root / "ok.py")


def test_nested_gitignores_and_info_exclude(tmp_path: Path) -> None:
    root = tree(tmp_path, {".gitignore": "*.gen.py\n", "pkg/.gitignore": "local.py\n!ok.gen.py\n",
                           ".git/info/exclude": "scratch.py\n", "local.py": "x", "pkg/local.py": "x",
                           "pkg/ok.gen.py": "x", "pkg/no.gen.py": "x", "ok.gen.py": "x", "scratch.py": "x",
                           "pkg/deeper/local.py": "x"})
    p = Privacy([root])
    assert refused(p, root, "local.py") is None  # pkg/.gitignore applies under pkg/ only
    assert refused(p, root, "pkg/local.py") == "ignored by git"
    assert refused(p, root, "pkg/deeper/local.py") == "ignored by git"
    assert refused(p, root, "pkg/ok.gen.py") is None  # the deeper file's negation wins
    assert refused(p, root, "pkg/no.gen.py") == "ignored by git" and refused(p, root, "ok.gen.py") == "ignored by git"
    assert refused(p, root, "scratch.py") == "ignored by git"
    assert refused(p, root, ".git/config") == "matches a secret-file pattern"  # git's internals, never


def test_a_changed_gitignore_is_read_again_after_forget(tmp_path: Path) -> None:
    root = tree(tmp_path, {"notes.py": "x"})
    p = Privacy([root])
    assert p.allows(root / "notes.py")
    (root / ".gitignore").write_text("notes.py\n")
    p.forget_ignores()
    assert not p.allows(root / "notes.py")


@pytest.mark.parametrize("name", [".env", ".env.local", ".env.production", "prod.env", "server.pem", "tls.key",
                                  "id_rsa", "id_ed25519.pub", "cert.p12", ".npmrc", ".netrc", ".pypirc",
                                  "credentials", "credentials.json", "gcp-credentials.json", ".aws/credentials",
                                  ".ssh/config", "secrets.yaml", "terraform.tfstate", ".git-credentials"])
def test_secret_files_are_refused_anywhere(tmp_path: Path, name: str) -> None:
    root = tree(tmp_path, {name: "x", f"deep/er/{name}": "x"})
    p = Privacy([root])
    assert refused(p, root, name) == "matches a secret-file pattern"
    assert refused(p, root, f"deep/er/{name}") == "matches a secret-file pattern"
    assert p.read(root / name) is None


def test_ordinary_names_that_look_close_are_allowed(tmp_path: Path) -> None:
    root = tree(tmp_path, {"environment.py": "x", "keyboard.py": "x", "secretary.py": "x", "env/setup.py": "x"})
    p = Privacy([root])
    for rel in ("environment.py", "keyboard.py", "secretary.py", "env/setup.py"):
        assert p.allows(root / rel), rel


def test_user_exclude_globs(tmp_path: Path) -> None:
    root = tree(tmp_path, {"vendor/lib.py": "x", "src/gen/out.py": "x", "src/app.py": "x", "docs/a.md": "x"})
    p = Privacy([root], exclude=["vendor/", "**/gen/", "*.md"])
    assert refused(p, root, "vendor/lib.py") == "matches an exclude glob"
    assert refused(p, root, "src/gen/out.py") == "matches an exclude glob"
    assert refused(p, root, "docs/a.md") == "matches an exclude glob"
    assert p.allows(root / "src/app.py")


def test_outside_the_workspace_and_symlinks_that_escape(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"secret_plan.py": "x", "dir/inner.py": "x"})
    root = tree(tmp_path / "ws", {"app.py": "x", ".env": "KEY=1", "real.py": "x"})
    os.symlink(outside / "secret_plan.py", root / "plan.py")
    os.symlink(outside / "dir", root / "linked_dir")
    os.symlink(root / ".env", root / "settings.py")  # an innocent name for a secret
    os.symlink(root / "real.py", root / ".env.example")  # a secret's name for an innocent file
    os.symlink(root / "real.py", root / "alias.py")
    p = Privacy([root])
    assert p.refusal(outside / "secret_plan.py") == "outside the workspace folders"
    assert p.refusal(root / "plan.py") == "outside the workspace folders"
    assert p.refusal(root / "linked_dir" / "inner.py") == "outside the workspace folders"
    assert p.refusal(root / ".." / "outside" / "secret_plan.py") == "outside the workspace folders"
    assert p.refusal(root / "settings.py") == "matches a secret-file pattern"
    assert p.refusal(root / ".env.example") == "matches a secret-file pattern"
    assert p.allows(root / "alias.py") and p.place(root / "alias.py").relative == "real.py"
    assert p.read(root / "plan.py") is None
    walked = {q.relative_to(root).as_posix() for q in p.walk(root)}
    assert walked == {"app.py", "real.py", "alias.py"}


def test_binary_undecodable_and_oversized_files(tmp_path: Path) -> None:
    root = tree(tmp_path, {"blob.py": b"abc\x00def", "latin1.py": "caf\xe9".encode("latin-1"),
                           "big.py": "x = 1\n" * 200, "small.py": "x = 1\n", "utf8.py": "café = 1\n"})
    p = Privacy([root], max_file_bytes=1000)
    assert p.read(root / "blob.py") is None
    assert p.read(root / "latin1.py") is None
    assert p.read(root / "big.py") is None  # 1,200 bytes
    assert p.read(root / "small.py") == "x = 1\n" and p.read(root / "utf8.py") == "café = 1\n"
    # open documents: the editor's text is held to the same rules
    assert p.text_refusal("a\x00b") == "binary"
    assert p.text_refusal("é" * 600) == "over 1000 bytes"  # 600 characters, 1,200 bytes
    assert p.admits(root / "small.py", "x = 2\n") and not p.admits(root / ".env", "x = 2\n")


def test_walk_never_enters_refused_folders(tmp_path: Path) -> None:
    root = tree(tmp_path, {".gitignore": "out/\n", "out/a.py": "x", "out/deep/b.py": "x", "src/b.py": "x",
                           ".ssh/c.py": "x", "node_modules/m.js": "x"})

    class Recording(Privacy):
        def allows(self, path):  # every file the walk looks at
            seen.append(Path(path).relative_to(root).as_posix())
            return super().allows(path)

    seen: list[str] = []
    walked = {q.relative_to(root).as_posix() for q in Recording([root]).walk(root, skip=frozenset({"node_modules"}))}
    assert walked == {".gitignore", "src/b.py"}
    assert sorted(seen) == [".gitignore", "src/b.py"]  # nothing under out/, .ssh/ or node_modules/ was looked at


def test_several_workspace_folders(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {".gitignore": "x.py\n", "x.py": "1"})
    b = tree(tmp_path / "b", {"x.py": "2"})
    p = Privacy([a, b])
    assert not p.allows(a / "x.py")
    assert p.place(b / "x.py").root == b and p.place(b / "x.py").relative == "x.py"
