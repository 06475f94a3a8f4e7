"""What may reach a prompt at all. Every source of project context asks `Privacy`, and nothing else
decides it.

A path is refused when it lies outside the workspace folders (symlinks resolved), when git would
ignore it (the `.gitignore` files from the workspace folder down to it, and `.git/info/exclude`), when
it looks like a secret (`.env*`, keys, credentials files, ...), when the user's exclude globs match it,
or when it is inside a folder refused for any of these reasons. A file's text is refused when it is
over the size cap or not UTF-8 text (a NUL byte, or bytes that do not decode). Open documents are held
to the same rules: the editor sending a file's text does not make it a source."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pathspec

# gitignore syntax: a pattern without a slash matches a name at any depth; one ending in / a folder.
SECRET_PATTERNS = (
    ".git/", ".hg/", ".svn/",  # version-control internals
    ".env", ".env.*", "*.env", ".envrc",
    "*.pem", "*.key", "*.crt", "*.cer", "*.der", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
    "*.gpg", "*.pgp", "*.asc", "*.ovpn",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.ppk", "known_hosts", "authorized_keys",
    ".ssh/", ".gnupg/", ".aws/", ".azure/", ".kube/", ".docker/",
    ".npmrc", ".yarnrc", ".yarnrc.yml", ".pypirc", ".netrc", "_netrc", ".pgpass", ".my.cnf", ".htpasswd",
    ".git-credentials", "credentials", "credentials.*", "*credentials*.json", "*.credentials",
    "secret", "secrets", "secrets.*", "*.secret", "*.secrets", "*secret*.json", "*secret*.yaml", "*secret*.yml",
    "*.tfstate", "*.tfstate.*", "*.tfvars", "service-account*.json", "*.keychain", "*.keychain-db",
)
BINARY_PROBE = 8192  # bytes searched for a NUL, as git does
DEFAULT_MAX_FILE_BYTES = 1_000_000
PLACES_KEPT = 65_536  # paths whose answer is kept; past it the cache starts again


@dataclass(frozen=True)
class Place:
    """Where an allowed path sits: its workspace folder and its '/'-separated path inside it."""

    root: Path
    relative: str


class Privacy:
    """Answers "may this path, and this text, reach a prompt?" for one set of workspace folders.

    The `.gitignore` files are read on first use and kept, and so is each path's answer: call
    `forget_ignores()` when an ignore file changes and `forget(path)` when a file does.
    Thread-safe: the index builds in the background while requests ask."""

    def __init__(self, roots: Iterable[Path | str], exclude: Sequence[str] = (),
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.roots = tuple(Path(r).expanduser().absolute() for r in roots)
        self._resolved = tuple(r.resolve() for r in self.roots)
        self.max_file_bytes = max_file_bytes
        self._secrets = pathspec.GitIgnoreSpec.from_lines(SECRET_PATTERNS)
        self._exclude = pathspec.GitIgnoreSpec.from_lines(list(exclude))
        self._specs: dict[Path, pathspec.GitIgnoreSpec | None] = {}
        self._dirs: dict[tuple[Path, str], str | None] = {}  # (root, folder) -> refusal
        self._places: dict[str, Place | None] = {}
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------------

    def place(self, path: Path | str) -> Place | None:
        """The path's workspace folder and relative path, when it may reach a prompt; else None.
        Kept per path until `forget(path)` or `forget_ignores()`: resolving a path costs system calls,
        and every definition and document of every request asks."""
        key = str(path)
        with self._lock:
            if key in self._places:
                return self._places[key]
        found = self._locate(path)
        answer = found if found is not None and self._refusal(found, is_dir=False) is None else None
        with self._lock:
            if len(self._places) >= PLACES_KEPT:
                self._places.clear()
            self._places[key] = answer
        return answer

    def forget(self, path: Path | str) -> None:
        """The file was created, changed or deleted (it may be a symlink now): ask again next time."""
        with self._lock:
            self._places.pop(str(path), None)

    def allows(self, path: Path | str) -> bool:
        return self.place(path) is not None

    def refusal(self, path: Path | str, is_dir: bool = False) -> str | None:
        """Why the path may not reach a prompt (a short phrase for logs), or None when it may."""
        found = self._locate(path)
        if found is None:
            return "outside the workspace folders"
        return self._refusal(found, is_dir)

    def _locate(self, path: Path | str) -> Place | None:
        """The path's place, judged on the resolved path (where its bytes really are) and, when it is
        a symlink inside a workspace folder, on the link's own name too (a link named .env is a
        secret wherever it points). None when the resolved path leaves every workspace folder, or
        when it cannot be resolved at all (a symlink loop, a NUL byte in a document's URI): one such
        file in a workspace must not stop the index or fail every request that meets it."""
        try:
            lexical = Path(os.path.abspath(Path(path).expanduser()))
            real = lexical.resolve()
        except (OSError, ValueError, RuntimeError):
            return None
        for root, resolved in zip(self.roots, self._resolved):
            if real == resolved or resolved in real.parents:
                rel = real.relative_to(resolved).as_posix()
                if lexical != real and (lexical == root or root in lexical.parents):
                    link = lexical.relative_to(root).as_posix()
                    if self._refusal(Place(root, link), is_dir=False) is not None:
                        return Place(root, link)  # refused by its own name; _refusal says why
                return Place(root, "" if rel == "." else rel)
        return None

    def _refusal(self, place: Place, is_dir: bool) -> str | None:
        if not place.relative:
            return None  # the workspace folder itself
        parts = place.relative.split("/")
        for depth in range(1, len(parts)):
            why = self._dir_refusal(place.root, "/".join(parts[:depth]))
            if why is not None:
                return why
        if is_dir:
            return self._dir_refusal(place.root, place.relative)
        return self._match(place.root, place.relative, is_dir=False)

    def _dir_refusal(self, root: Path, folder: str) -> str | None:
        key = (root, folder)
        with self._lock:
            if key in self._dirs:
                return self._dirs[key]
        why = self._match(root, folder, is_dir=True)
        with self._lock:
            self._dirs[key] = why
        return why

    def _match(self, root: Path, rel: str, is_dir: bool) -> str | None:
        """The rules for one path, its parent folders aside."""
        probe = rel + "/" if is_dir else rel
        if self._secrets.match_file(probe):
            return "matches a secret-file pattern"
        if self._exclude.match_file(probe):
            return "matches an exclude glob"
        if self._ignored(root, probe):
            return "ignored by git"
        return None

    def _ignored(self, root: Path, probe: str) -> bool:
        """git's rule: `.git/info/exclude` first, then each `.gitignore` from the workspace folder down
        to the path's folder, the last matching pattern deciding (a `!` pattern re-includes)."""
        verdict: bool | None = None
        folders = probe.rstrip("/").split("/")[:-1]
        sources = [(root / ".git" / "info" / "exclude", "")]
        sources += [(root.joinpath(*folders[:d]) / ".gitignore", "/".join(folders[:d]))
                    for d in range(len(folders) + 1)]
        for file, base in sources:
            spec = self._spec(file)
            if spec is None:
                continue
            result = spec.check_file(probe[len(base) + 1:] if base else probe)
            if result.include is not None:
                verdict = result.include
        return verdict is True

    def _spec(self, file: Path) -> pathspec.GitIgnoreSpec | None:
        with self._lock:
            if file in self._specs:
                return self._specs[file]
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
            spec: pathspec.GitIgnoreSpec | None = pathspec.GitIgnoreSpec.from_lines(lines)
        except OSError:
            spec = None
        with self._lock:
            self._specs[file] = spec
        return spec

    def forget_ignores(self) -> None:
        """Read the ignore files again on next use (one was created, changed or deleted)."""
        with self._lock:
            self._specs.clear()
            self._dirs.clear()
            self._places.clear()

    # -- text ----------------------------------------------------------------------------------

    def text_refusal(self, text: str) -> str | None:
        """Why a text (an open document's) may not reach a prompt, or None."""
        # a character is at most 4 bytes: only a text that may be over the cap is encoded to know
        if len(text) > self.max_file_bytes or len(text) * 4 > self.max_file_bytes \
                and len(text.encode("utf-8", "surrogatepass")) > self.max_file_bytes:
            return f"over {self.max_file_bytes} bytes"
        if "\x00" in text[:BINARY_PROBE]:
            return "binary"
        return None

    def admits(self, path: Path | str, text: str) -> bool:
        """An open document: its path and its text both allowed."""
        return self.allows(path) and self.text_refusal(text) is None

    def read(self, path: Path | str) -> str | None:
        """A file's text from disk, or None when the path or the content is refused or unreadable.
        Nothing over the size cap is read."""
        if not self.allows(path):
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_file_bytes + 1)  # one byte more than the cap says it is over
        except OSError:
            return None
        if len(data) > self.max_file_bytes or b"\x00" in data[:BINARY_PROBE]:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    # -- walking -------------------------------------------------------------------------------

    def walk(self, root: Path, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
        """Every file under a workspace folder whose path is allowed, refused folders (and folders
        named in `skip`) never entered. Symlinked folders are not followed: their files are reached
        through their real place."""
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if d not in skip and not (here / d).is_symlink()
                             and self.refusal(here / d, is_dir=True) is None)
            for name in sorted(files):
                path = here / name
                if self.allows(path):
                    yield path
