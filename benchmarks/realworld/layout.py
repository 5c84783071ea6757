"""Lay the real-world corpus out from local git directories, at the commits pinned in ``repos.json``.

    python benchmarks/realworld/layout.py --git-dirs /work/.mirror
    python benchmarks/realworld/layout.py --repo-dir karpathy/nanoGPT=/src/nanoGPT   # one repo from a clone

For every repo in ``repos.json`` this finds a git directory (bare or a clone's ``.git``), checks that the pinned
commit is in it, and extracts the included ``.py`` / ``.ipynb`` files at that commit into
``benchmarks/corpus/realworld/<owner>__<name>/`` (git-ignored; none of their code is committed). No network is
used. A repo whose git directory or commit is missing is reported with the commands that get it:

    git clone https://github.com/<owner>/<name> /some/dir/<owner>+<name>
    git -C /some/dir/<owner>+<name> checkout <sha>      # or: git fetch origin <sha>

and then ``--git-dirs /some/dir`` (folders named ``owner+name``, ``owner__name`` or ``name``) or
``--repo-dir owner/name=/some/dir/<owner>+<name>``.

Also writes ``benchmarks/corpus/realworld/doctor.toml`` (``respect-gitignore = false``: the corpus lives in a
git-ignored folder of this repo) and ``manifest.json`` (files and lines per repo, for REALWORLD.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(HERE, "repos.json")
CORPUS = os.path.join(REPO_ROOT, "benchmarks", "corpus", "realworld")


def load_spec(path: str = SPEC) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def slug(name: str) -> str:
    return name.replace("/", "__")


def _git(git_dir: str, *args: str, binary: bool = False):
    out = subprocess.run(["git", "--git-dir", git_dir, *args], capture_output=True, check=False)
    if out.returncode != 0:
        return None
    return out.stdout if binary else out.stdout.decode("utf-8", "replace")


def _as_git_dir(path: str) -> str | None:
    """``path`` if it is a git directory, its ``.git`` if it is a work tree, else None."""
    for cand in (path, os.path.join(path, ".git"), os.path.join(path, "repo"), os.path.join(path, "repo", ".git")):
        if os.path.isdir(cand) and _git(cand, "rev-parse", "--git-dir") is not None:
            if os.path.isfile(os.path.join(cand, "HEAD")):
                return cand
    return None


def find_git_dir(name: str, roots: list[str], explicit: dict[str, str]) -> str | None:
    if name in explicit:
        return _as_git_dir(explicit[name])
    owner, repo = name.split("/")
    for root in roots:
        for folder in (f"{owner}+{repo}", f"{owner}__{repo}", repo, f"{repo}.git"):
            found = _as_git_dir(os.path.join(root, folder))
            if found:
                return found
    return None


def selected(path: str, entry: dict, spec: dict) -> bool:
    """Is a repo file (path relative to the repo root) part of the corpus?"""
    if not path.endswith(tuple(spec.get("suffixes", [".py", ".ipynb"]))):
        return False
    includes = entry.get("include") or [""]
    if not any(inc == "" or path == inc or path.startswith(inc.rstrip("/") + "/") for inc in includes):
        return False
    for exc in entry.get("exclude", []):
        if path == exc or path.startswith(exc.rstrip("/") + "/"):
            return False
    default = spec.get("default_exclude", {})
    parts = path.split("/")
    if any(part in default.get("dirs", []) for part in parts[:-1]):
        return False
    if any(fnmatch.fnmatch(parts[-1], pat) for pat in default.get("files", [])):
        return False
    if ".ipynb_checkpoints" in parts:
        return False
    return True


def count_lines(data: bytes, path: str) -> int:
    if path.endswith(".ipynb"):
        try:
            nb = json.loads(data.decode("utf-8"))
            n = 0
            for cell in nb.get("cells", []):
                if cell.get("cell_type") == "code":
                    src = cell.get("source", "")
                    src = "".join(src) if isinstance(src, list) else src
                    n += len(src.splitlines())
            return n
        except (ValueError, UnicodeDecodeError, AttributeError):
            return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def lay_out(entry: dict, spec: dict, git_dir: str, dest_root: str) -> dict:
    sha = entry["commit"]
    names = _git(git_dir, "ls-tree", "-r", "--name-only", "-z", sha)
    files = sorted(p for p in names.split("\0") if p and selected(p, entry, spec))
    dest = os.path.join(dest_root, slug(entry["name"]))
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    lines = 0
    written = 0
    # Blobs are read with one `git cat-file --batch` per repo (snapshots may lack big unrelated blobs, which
    # makes `git archive` of a whole tree fail).
    proc = subprocess.run(
        ["git", "--git-dir", git_dir, "cat-file", "--batch"],
        input="".join(f"{sha}:{f}\n" for f in files).encode(),
        capture_output=True,
        check=True,
    )
    buf = proc.stdout
    pos = 0
    for f in files:
        nl = buf.index(b"\n", pos)
        header = buf[pos:nl].split()
        pos = nl + 1
        if len(header) < 3 or header[1] != b"blob":
            print(f"  warning: {entry['name']}: {f} not readable at {sha[:12]}", file=sys.stderr)
            continue
        size = int(header[2])
        blob = buf[pos : pos + size]
        pos += size + 1
        out = os.path.join(dest, f)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as fh:
            fh.write(blob)
        written += 1
        lines += count_lines(blob, f)
    py = sum(1 for f in files if f.endswith(".py") and os.path.isfile(os.path.join(dest, f)))
    return {"name": entry["name"], "commit": sha, "files": written, "py": py, "ipynb": written - py, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--git-dirs", action="append", default=[], help="folder holding git dirs named owner+name (repeatable)")
    ap.add_argument("--repo-dir", action="append", default=[], help="owner/name=PATH to a clone or git dir (repeatable)")
    ap.add_argument("--only", default="", help="comma-separated owner/name list to lay out (default: all)")
    ap.add_argument("--dest", default=CORPUS)
    args = ap.parse_args(argv)
    spec = load_spec()
    explicit = {}
    for item in args.repo_dir:
        name, _, path = item.partition("=")
        explicit[name] = path
    only = {s for s in args.only.split(",") if s}
    os.makedirs(args.dest, exist_ok=True)
    manifest_path = os.path.join(args.dest, "manifest.json")
    manifest = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = {m["name"]: m for m in json.load(fh).get("repos", [])}
    missing = []
    for entry in spec["repos"]:
        name, sha = entry["name"], entry["commit"]
        if only and name not in only:
            continue
        git_dir = find_git_dir(name, args.git_dirs, explicit)
        if git_dir is None:
            missing.append((name, sha, "no git directory found"))
            continue
        if _git(git_dir, "cat-file", "-e", f"{sha}^{{commit}}") is None:
            missing.append((name, sha, f"commit not in {git_dir}"))
            continue
        info = lay_out(entry, spec, git_dir, args.dest)
        manifest[name] = info
        print(f"{name:45s} {sha[:12]}  {info['files']:5d} files ({info['py']} .py, {info['ipynb']} .ipynb)  {info['lines']:7d} lines")
    order = [e["name"] for e in spec["repos"]]
    with open(manifest_path, "w", encoding="utf-8") as fh:
        json.dump({"repos": [manifest[n] for n in order if n in manifest]}, fh, indent=2)
    with open(os.path.join(args.dest, "doctor.toml"), "w", encoding="utf-8") as fh:
        fh.write("# written by benchmarks/realworld/layout.py: the corpus sits in a git-ignored folder\nrespect-gitignore = false\n")
    total_files = sum(m["files"] for m in manifest.values())
    total_lines = sum(m["lines"] for m in manifest.values())
    print(f"corpus: {len(manifest)} repos, {total_files} files, {total_lines} lines -> {args.dest}")
    if missing:
        print(f"\nMISSING {len(missing)} repo(s):", file=sys.stderr)
        for name, sha, why in missing:
            print(f"  {name} @ {sha}: {why}", file=sys.stderr)
            print(f"      git clone https://github.com/{name} DIR/{name.replace('/', '+')}", file=sys.stderr)
            print(f"      git -C DIR/{name.replace('/', '+')} fetch origin {sha} && git -C DIR/{name.replace('/', '+')} checkout {sha}", file=sys.stderr)
        print("  then rerun with --git-dirs DIR (or --repo-dir owner/name=DIR/owner+name)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
