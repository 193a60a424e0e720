"""The mutation gate: every defence in tests/mutants/defences.toml must fail a fast test.

Each entry names a file, an exact snippet of it (which must occur exactly once, else the entry
is an error: a refactor cannot silently turn a mutant into a no-op), the replacement that
disables the defence, and the tests that should fail without it. The gate copies the checkout
(the files git knows, as they are in the working tree) into a temporary folder, runs the union of
all named tests there unmutated (they must pass, else the gate means nothing), then applies each
mutant in turn to the copy, runs its tests with ``-x`` and puts the file back. The copy is imported
first (``PYTHONPATH``), also by the agents the e2e tests start with ``python -m agent``; the
checkout itself is never written.

A mutant is *killed* when pytest exits 1 (a test failed or errored). Exit 0 means it *survived*;
any other exit (usage error, interrupted, no tests collected, internal error) or a timeout is an
*error* of the gate, not a kill. The exit status is 0 only when every mutant was killed.

Run it as ``scripts/mutants`` (``--list``, ``--only NAME``; see ``--help``). docs/mutants.md
says how to add an entry.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFENCES = ROOT / "tests" / "mutants" / "defences.toml"
FIELDS = ("name", "file", "original", "replacement", "why", "tests")
# pytest's exit codes: 0 all passed, 1 some failed; 2 interrupted (also a collection error),
# 3 internal error, 4 usage error, 5 no tests collected.
KILLED_EXIT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# A parametrized id may hold spaces ("test_x[input: a\\ntarget: pdf]"): the brackets go whole.
_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+?(?:\[.*?\])?)(?: - .*)?$")


class GateError(Exception):
    """The list of defences or the tree is not usable: the gate cannot judge."""


@dataclasses.dataclass(frozen=True)
class Defence:
    name: str
    file: str
    original: str
    replacement: str
    why: str
    tests: tuple[str, ...]


@dataclasses.dataclass
class Outcome:
    name: str
    verdict: str  # killed, SURVIVED, ERROR
    detail: str  # the first failing test, or why the gate could not judge
    seconds: float


# --------------------------------------------------------------------------- the list


def parse_defences(text: str) -> list[Defence]:
    """The entries of a defences.toml text; GateError naming the entry when one is malformed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"defences list: {exc}") from exc
    entries = data.get("mutant")
    if not isinstance(entries, list) or not entries:
        raise GateError("defences list: no [[mutant]] entries")
    out: list[Defence] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, 1):
        label = f"entry {i} ({entry.get('name', '?')})"
        missing = [f for f in FIELDS if f not in entry]
        extra = sorted(set(entry) - set(FIELDS))
        if missing or extra:
            raise GateError(f"{label}: missing {missing}, unknown {extra}")
        for f in ("name", "file", "original", "replacement", "why"):
            if not isinstance(entry[f], str):
                raise GateError(f"{label}: {f} must be a string")
        tests = entry["tests"]
        if not isinstance(tests, list) or not all(isinstance(t, str) and t for t in tests):
            raise GateError(f"{label}: tests must be a list of pytest node ids")
        name = entry["name"]
        if not _NAME.match(name):
            raise GateError(f"{label}: name must be lower-case words joined by '-'")
        if name in seen:
            raise GateError(f"{label}: the name {name} is used twice")
        seen.add(name)
        out.append(
            Defence(
                name=name,
                file=entry["file"],
                original=entry["original"],
                replacement=entry["replacement"],
                why=entry["why"].strip(),
                tests=tuple(tests),
            )
        )
    return out


def load_defences(path: Path = DEFENCES) -> list[Defence]:
    return parse_defences(path.read_text(encoding="utf-8"))


def mutate(source: str, d: Defence) -> str:
    """``source`` with the defence's snippet replaced; GateError unless it occurs exactly once."""
    count = source.count(d.original)
    if count != 1:
        where = "does not occur" if count == 0 else f"occurs {count} times"
        raise GateError(
            f"{d.name}: the snippet {d.original!r} {where} in {d.file} (it must occur exactly "
            "once: update the entry to the code as it is now)"
        )
    return source.replace(d.original, d.replacement, 1)


def problems(d: Defence, root: Path) -> list[str]:
    """Why the entry cannot be run against the tree at ``root`` (empty when it can)."""
    found: list[str] = []
    if not d.tests:
        found.append(f"{d.name}: names no test, so nothing could kill it")
    if not d.why:
        found.append(f"{d.name}: says no why")
    if d.original == d.replacement:
        found.append(f"{d.name}: the replacement equals the original")
    path = root / d.file
    if not path.is_file():
        return [*found, f"{d.name}: no file {d.file}"]
    source = path.read_text(encoding="utf-8")
    try:
        mutated = mutate(source, d)
    except GateError as exc:
        found.append(str(exc))
    else:
        if d.file.endswith(".py"):
            try:
                compile(mutated, d.file, "exec")
            except SyntaxError as exc:
                found.append(f"{d.name}: the mutated {d.file} does not compile: {exc}")
    for node in d.tests:
        test_file, _, rest = node.partition("::")
        tpath = root / test_file
        if not tpath.is_file():
            found.append(f"{d.name}: no test file {test_file}")
            continue
        func = rest.split("::")[-1].split("[")[0]
        if func and not re.search(rf"\bdef {re.escape(func)}\b", tpath.read_text("utf-8")):
            found.append(f"{d.name}: no test {func} in {test_file}")
    return found


# --------------------------------------------------------------------------- pytest


def verdict_of(exit_code: int) -> str:
    """killed (a test failed), SURVIVED (all passed) or ERROR (pytest could not judge)."""
    if exit_code == KILLED_EXIT:
        return "killed"
    if exit_code == 0:
        return "SURVIVED"
    return "ERROR"


def first_failure(output: str) -> str | None:
    """The node id of the first FAILED/ERROR line of pytest's short summary (``-rfE``)."""
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if m:
            return m.group(2) + (" (error)" if m.group(1) == "ERROR" else "")
    return None


def union(tests: Iterable[Sequence[str]]) -> list[str]:
    return list(dict.fromkeys(t for ts in tests for t in ts))


def run_pytest(
    copy: Path, tests: Sequence[str], *, python: str, timeout: float, stop_first: bool = True
) -> tuple[int | None, str]:
    """Run ``tests`` in ``copy`` importing the copy's packages; (exit code or None, output)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc of one mutant can be taken for another's
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests]
    if stop_first:
        cmd.insert(3, "-x")
    # Its own process group: on a timeout the agents and emulators the tests started go too.
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace")


# --------------------------------------------------------------------------- the copy


def tree_files(root: Path) -> list[str]:
    """The files git knows (tracked, and new ones not ignored), as relative paths."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode("utf-8", "surrogateescape")
    return sorted({p for p in out.split("\0") if p})


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tree_files(root):
        src = root / rel
        if not os.path.lexists(src) or src.is_dir():
            continue  # deleted in the working tree, or a submodule
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def imported_from(copy: Path, python: str) -> str:
    """Where ``python -m agent`` run like the e2e tests run it would import ``agent`` from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [python, "-c", "import agent; print(agent.__file__)"],
        cwd=tempfile.gettempdir(),  # not the copy: PYTHONPATH alone must do it
        env=env,
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    ).stdout.strip()


# --------------------------------------------------------------------------- the gate


def run_one(d: Defence, copy: Path, *, python: str, timeout: float) -> Outcome:
    path = copy / d.file
    source = path.read_text(encoding="utf-8")
    started = time.monotonic()
    try:
        path.write_text(mutate(source, d), encoding="utf-8")
        code, output = run_pytest(copy, d.tests, python=python, timeout=timeout)
    finally:
        path.write_text(source, encoding="utf-8")
    seconds = time.monotonic() - started
    if code is None:
        return Outcome(d.name, "ERROR", f"timed out after {timeout:.0f}s", seconds)
    verdict = verdict_of(code)
    if verdict == "killed":
        detail = first_failure(output) or "(a test failed; no summary line found)"
    elif verdict == "SURVIVED":
        detail = "every named test passed"
    else:
        tail = " | ".join(output.strip().splitlines()[-3:])
        detail = f"pytest exit {code}: {tail}"
    return Outcome(d.name, verdict, detail, seconds)


def table(outcomes: Sequence[Outcome]) -> str:
    w = max([len("mutant"), *(len(o.name) for o in outcomes)])
    lines = [f"{'mutant':<{w}}  {'result':<8}  {'time':>6}  killed by / detail"]
    lines.append("-" * len(lines[0]) + "-" * 20)
    for o in outcomes:
        lines.append(f"{o.name:<{w}}  {o.verdict:<8}  {o.seconds:5.1f}s  {o.detail}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/mutants",
        description="Apply each defence mutation of tests/mutants/defences.toml to a copy of the "
        "tree and fail unless its tests kill it.",
    )
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true", help="only check the list against the tree")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this mutant")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--defences", type=Path, default=DEFENCES, help=argparse.SUPPRESS)
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)"
    )
    ap.add_argument(
        "--skip-sanity",
        action="store_true",
        help="do not first run the tests unmutated (only while writing an entry)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the copies (to debug a mutant)")
    args = ap.parse_args(argv)
    python = sys.executable

    try:
        defences = load_defences(args.defences)
    except GateError as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for d in defences:
            print(f"{d.name:<32} {d.file:<22} {d.why}")
            for t in d.tests:
                print(f"{'':<32}   {t}")
        return 0
    found = [p for d in defences for p in problems(d, ROOT)]
    if found:
        print("mutants: the list does not fit the tree:", *found, sep="\n  ", file=sys.stderr)
        return 2
    if args.check:
        print(f"mutants: {len(defences)} entries fit the tree")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {d.name for d in defences})
        if unknown:
            print(f"mutants: no mutant named {', '.join(unknown)} (see --list)", file=sys.stderr)
            return 2
        defences = [d for d in defences if d.name in args.only]
    if args.jobs < 1:
        print("mutants: -j must be at least 1", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="mutants-"))
    t0 = time.monotonic()
    try:
        copies = [base / f"tree{i}" for i in range(min(args.jobs, len(defences)))]
        for c in copies:
            copy_tree(ROOT, c)
            where = Path(imported_from(c, python)).resolve()
            if not where.is_relative_to(c.resolve()):
                print(f"mutants: the copy is not imported (agent from {where})", file=sys.stderr)
                return 2
        print(f"mutants: {len(defences)} mutants; copy of the tree in {base}", flush=True)
        if not args.skip_sanity:
            tests = union(d.tests for d in defences)
            print(f"mutants: sanity run of {len(tests)} tests, unmutated ...", flush=True)
            s0 = time.monotonic()
            code, output = run_pytest(
                copies[0], tests, python=python, timeout=args.timeout * 2, stop_first=False
            )
            if code != 0:
                print(output[-6000:])
                print(
                    f"mutants: the unmutated tree does not pass the named tests (exit {code}); "
                    "the gate cannot judge",
                    file=sys.stderr,
                )
                return 2
            print(f"mutants: sanity run passed in {time.monotonic() - s0:.1f}s", flush=True)

        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def job(d: Defence) -> Outcome:
            c = free.get()
            try:
                o = run_one(d, c, python=python, timeout=args.timeout)
            finally:
                free.put(c)
            print(f"  {o.name}: {o.verdict} ({o.seconds:.1f}s) {o.detail}", flush=True)
            return o

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(copies)) as pool:
            outcomes = list(pool.map(job, defences))
    finally:
        if args.keep:
            print(f"mutants: copies kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(table(outcomes))
    survived = [o.name for o in outcomes if o.verdict == "SURVIVED"]
    errors = [o.name for o in outcomes if o.verdict == "ERROR"]
    killed = len(outcomes) - len(survived) - len(errors)
    print(
        f"\n{killed}/{len(outcomes)} killed, {len(survived)} survived, {len(errors)} errors "
        f"in {time.monotonic() - t0:.0f}s"
    )
    if survived:
        print("SURVIVED: " + ", ".join(survived))
    if errors:
        print("ERROR: " + ", ".join(errors))
    return 0 if not survived and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
