#!/usr/bin/env python3
"""Mutation testing of src/bpf; run through scripts/mutants.

The table (scripts/mutants.table) holds one block per mutant:

    [dnat.redirect-not-peer]
    file: dnat.bpf.c
    find: bpf_redirect_peer(v->veth_ifindex, 0), &acct);\n}
    replace: bpf_redirect(v->veth_ifindex, 0), &acct);\n}
    breaks: published packets take the slow path through the veth
    tests: e2e                      (optional: targets to run first)
    survives: why it cannot be told (optional: an accepted survivor)

`find` must occur exactly once in src/bpf/<file> (\\n, \\t and \\\\ are
escapes), or `occurs: N` times when the IPv4 and IPv6 paths share the text,
and then every occurrence is replaced; the mutant is the file with it replaced. A mutant is

    killed     a test failed (the first failing test is named),
    survived   every test of every target passed,
    stillborn  it does not build (clang, -Werror) or does not verify.

Everything happens in a private copy of the tree (default
/var/tmp/datapath-mutants/tree, DATAPATH_MUTANTS_DIR to move it) with a
target directory of its own, built incrementally, so a mutant rebuilds the
BPF objects, the library that embeds them and the test binaries it runs.
Tests run one at a time, each in a process of its own, and a mutant stops
at its first failing test, so a killed mutant costs seconds.
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.getcwd()
TABLE = os.path.join(ROOT, "scripts", "mutants.table")
DOC = os.environ.get("DATAPATH_MUTANTS_DOC", os.path.join(ROOT, "docs", "MUTANTS.md"))
WORK = os.environ.get("DATAPATH_MUTANTS_DIR", "/var/tmp/datapath-mutants")
TREE = os.path.join(WORK, "tree")
TARGET = os.path.join(WORK, "target")

# The privileged targets whose tests run the programs, cheapest and most
# direct first: the fixture tables through BPF_PROG_TEST_RUN, then the end
# to end ones. A mutant stops at its first failing test, so only survivors
# pay for all of them. The control-plane targets (maps, cli, recover,
# upgrade) load the programs but test no packet path: a row names them in
# `tests:` when they matter.
TARGETS = [
    "programs", "hardening", "guard", "e2e", "e2e_flows", "e2e_hardening",
    "guard_e2e", "real_software", "host_access", "programs6", "e2e6", "observe",
]
EXTRA_TARGETS = ["maps", "cli", "recover", "upgrade"]

# Targets that tell a file's mutants apart fastest, run before the others.
FIRST = {
    "guard.bpf.c": ["guard"],
    "dp_guard.h": ["guard"],
    "hostaccess.bpf.c": ["host_access"],
    "dp_pkt6.h": ["programs6"],
    "dp_trace.h": ["observe"],
}

# Tests that assert timing (a player's login within 5 s under a flood, no
# stall of a request loop during 100 upgrades): on a loaded machine they
# fail with no mutant at all, and a kill by them would mean nothing. Every
# path they cover is covered by a deterministic test too.
SKIP = {
    "e2e_hardening::hundred_loads_under_load",
    "guard_e2e::player_plays_through_a_spoofed_flood",
}

# A test is given this many times its time in the last clean run (and at
# least MIN_TIMEOUT) before it counts as hung; a hang kills the mutant.
TIMEOUT_FACTOR = 4
MIN_TIMEOUT = 90
UNKNOWN_TIMEOUT = 600


def die(msg):
    print(f"mutants: {msg}", file=sys.stderr)
    sys.exit(1)


def unescape(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(n, "\\" + n))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_table(path):
    rows, cur = [], None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", line.strip())
            if m:
                cur = {"id": m.group(1), "line": n}
                rows.append(cur)
                continue
            m = re.fullmatch(r"(file|find|replace|breaks|tests|survives|occurs):(?: (.*))?", line)
            if not m or cur is None:
                die(f"{path}:{n}: expected [name] or 'key: value', got {line[:64]!r}")
            key, val = m.group(1), m.group(2) or ""
            if key in cur:
                die(f"{path}:{n}: {key} given twice in [{cur['id']}]")
            cur[key] = unescape(val) if key in ("find", "replace") else val
    seen = set()
    for r in rows:
        for key in ("file", "find", "replace", "breaks"):
            if key not in r:
                die(f"{path}:{r['line']}: [{r['id']}] has no {key}")
        if r["id"] in seen:
            die(f"{path}:{r['line']}: [{r['id']}] appears twice")
        if r["find"] == r["replace"]:
            die(f"{path}:{r['line']}: [{r['id']}] replaces its text with itself")
        seen.add(r["id"])
        if not r.get("occurs", "1").isdigit() or int(r.get("occurs", "1")) < 1:
            die(f"{path}:{r['line']}: [{r['id']}] occurs must be a count")
        r["occurs"] = int(r.get("occurs", "1"))
        r["tests"] = r.get("tests", "").split()
        for t in r["tests"]:
            if t not in TARGETS + EXTRA_TARGETS:
                die(f"{path}:{r['line']}: [{r['id']}] names unknown target {t}")
    return rows


def check_rows(rows, src_dir):
    """Every row must name its text exactly once in today's file."""
    bad = []
    for r in rows:
        path = os.path.join(src_dir, "src", "bpf", r["file"])
        try:
            text = open(path).read()
        except OSError:
            bad.append(f"[{r['id']}] {r['file']}: no such file")
            continue
        n = text.count(r["find"])
        if n != r["occurs"]:
            want = "once" if r["occurs"] == 1 else f"{r['occurs']} times"
            bad.append(f"[{r['id']}] {r['file']}: its find text occurs {n} times (must be {want})")
    return bad


# ---------------------------------------------------------------- tree

def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def sync_tree():
    """Makes TREE hold exactly the checkout's tracked files (as they are in
    the working tree). Only files whose content differs are written, so
    cargo sees everything else as unchanged and the build stays warm."""
    files = tracked_files()
    want = set(files)
    os.makedirs(TREE, exist_ok=True)
    for p in files:
        src, dst = os.path.join(ROOT, p), os.path.join(TREE, p)
        data = open(src, "rb").read()
        try:
            if open(dst, "rb").read() == data:
                continue
        except OSError:
            pass
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
    for dirpath, dirnames, filenames in os.walk(TREE):
        rel = os.path.relpath(dirpath, TREE)
        if rel == "target" or rel.startswith("target" + os.sep):
            dirnames[:] = []
            continue
        for fn in filenames:
            p = os.path.normpath(os.path.join(rel, fn))
            if p not in want:
                os.remove(os.path.join(dirpath, fn))
    # The upgrade tests set a host up with the release before, which
    # scripts/prev-release builds from git history the copy does not have:
    # lend it the checkout's build of it.
    prev = os.path.join(ROOT, "target", "prev-release")
    link = os.path.join(TREE, "target", "prev-release")
    if os.path.isdir(prev) and not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(prev, link)


def source_hash():
    """What the copy holds, but the docs and this harness."""
    h = hashlib.sha256()
    files = []
    for dirpath, dirnames, filenames in os.walk(TREE):
        rel = os.path.relpath(dirpath, TREE)
        if rel == "target":
            dirnames[:] = []
            continue
        files += [os.path.normpath(os.path.join(rel, f)) for f in filenames]
    for p in sorted(files):
        if p.startswith(("docs/", "scripts/mutants")) or p.endswith(".md"):
            continue
        h.update(p.encode() + b"\0" + open(os.path.join(TREE, p), "rb").read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- build and run

def cargo_env():
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = TARGET
    # Incremental: a mutant changes only the embedded objects, so the
    # library and the test crates are mostly reused from the last build.
    env["CARGO_PROFILE_RELEASE_INCREMENTAL"] = "true"
    env["DATAPATH_PRIVILEGED_TESTS"] = "1"
    env.setdefault("RUST_BACKTRACE", "0")
    return env


def build(target):
    """Builds one test target (and datapathctl); returns (executable, log)."""
    p = subprocess.run(
        ["cargo", "build", "--release", "--test", target, "--message-format=json"],
        cwd=TREE, env=cargo_env(), capture_output=True, text=True)
    exe = None
    for line in p.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if (m.get("reason") == "compiler-artifact" and m.get("executable")
                and m["target"]["name"] == target and "test" in m["target"]["kind"]):
            exe = m["executable"]
    log = p.stderr + "\n".join(
        json.loads(l).get("message", {}).get("rendered") or ""
        for l in p.stdout.splitlines() if l.startswith("{") and '"compiler-message"' in l)
    if p.returncode != 0 or not exe:
        return None, log
    return exe, log


def list_tests(exe):
    p = subprocess.run([exe, "--list", "--format", "terse"], cwd=TREE, env=cargo_env(),
                       capture_output=True, text=True, check=True)
    return [l[: -len(": test")] for l in p.stdout.splitlines() if l.endswith(": test")]


def run_test(exe, name, timeout):
    """Runs one test in a process group of its own; (ok, output, seconds)."""
    start = time.monotonic()
    p = subprocess.Popen([exe, "--exact", name, "--test-threads", "1", "--nocapture"],
                         cwd=TREE, env=cargo_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return False, out + f"\n(timed out after {timeout:.0f} s)", time.monotonic() - start
    ok = p.returncode == 0 and re.search(r"test result: ok\. 1 passed", out) is not None
    return ok, out, time.monotonic() - start


def panic_line(out):
    for line in out.splitlines():
        if "panicked at" in line:
            i = out.splitlines().index(line)
            nxt = out.splitlines()[i + 1] if i + 1 < len(out.splitlines()) else ""
            return (line.split("panicked at", 1)[1].strip() + " " + nxt.strip())[:160]
    if "timed out after" in out:
        return out.strip().splitlines()[-1]
    return out.strip().splitlines()[-1][:160] if out.strip() else ""


def target_order(row):
    first = row["tests"] + [t for t in FIRST.get(row["file"], []) if t not in row["tests"]]
    return first + [t for t in TARGETS if t not in first]


class Baseline:
    """Test lists and durations of the last clean run, per source hash."""

    def __init__(self):
        self.path = os.path.join(WORK, "baseline.json")
        try:
            self.data = json.load(open(self.path))
        except (OSError, ValueError):
            self.data = {}

    def timeout(self, target, test):
        t = self.data.get("times", {}).get(f"{target}::{test}")
        return UNKNOWN_TIMEOUT if t is None else max(MIN_TIMEOUT, TIMEOUT_FACTOR * t)

    def run(self, targets, log):
        times = {}
        for target in targets:
            exe, blog = build(target)
            if not exe:
                die(f"the unmutated tree does not build ({target}):\n{blog[-3000:]}")
            for test in list_tests(exe):
                ok, out, dt = run_test(exe, test, UNKNOWN_TIMEOUT)
                times[f"{target}::{test}"] = dt
                log(f"  baseline {target}::{test} {'ok' if ok else 'FAILED'} {dt:.1f} s")
                if not ok:
                    die(f"the unmutated tree fails {target}::{test}; fix that first:\n{out[-3000:]}")
        self.data = {"hash": source_hash(), "times": times}
        with open(self.path, "w") as f:
            json.dump(self.data, f, indent=1)


def run_mutant(row, baseline, log):
    path = os.path.join(TREE, "src", "bpf", row["file"])
    orig = open(path).read()
    if orig.count(row["find"]) != row["occurs"]:
        return {"result": "stale", "by": "find text not found as often as its row says"}
    with open(path, "w") as f:
        f.write(orig.replace(row["find"], row["replace"]))
    start = time.monotonic()
    try:
        for target in target_order(row):
            exe, blog = build(target)
            if not exe:
                first = next((l.strip() for l in blog.splitlines() if "error" in l), "build failed")
                return {"result": "stillborn", "by": "does not build: " + first[:120]}
            for test in list_tests(exe):
                if f"{target}::{test}" in SKIP:
                    continue
                ok, out, dt = run_test(exe, test, baseline.timeout(target, test))
                if not ok:
                    # A kill must be reproducible: a second failure of the
                    # same test confirms it.
                    ok, out, dt = run_test(exe, test, baseline.timeout(target, test))
                if ok:
                    continue
                if re.search(r"\(verifier\)|failed to load object|Permission denied \(os error 13\)", out):
                    return {"result": "stillborn", "by": f"does not verify ({target}::{test})"}
                return {"result": "killed", "by": f"{target}::{test}", "why": panic_line(out)}
        return {"result": "survived", "by": ""}
    finally:
        with open(path, "w") as f:
            f.write(orig)
        row["seconds"] = time.monotonic() - start


# ---------------------------------------------------------------- report

def md_escape(s):
    return s.replace("|", "\\|").replace("\n", " ")


def read_doc():
    """Results of earlier runs, by mutant name, from docs/MUTANTS.md."""
    res = {}
    try:
        text = open(DOC).read()
    except OSError:
        return res
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) >= 5:
            res[cells[0].strip("`")] = {"result": cells[1], "by": cells[2].strip("`"),
                                         "tree": cells[5] if len(cells) >= 6 else ""}
    return res


def write_doc(rows, results, started):
    counts = {}
    for r in rows:
        k = results.get(r["id"], {}).get("result", "not run")
        counts[k] = counts.get(k, 0) + 1
    killed, survived = counts.get("killed", 0), counts.get("survived", 0)
    # A survivor the table shows to be equivalent (no behaviour differs)
    # is no missed bug: it is left out of the score, and counted apart.
    equiv = sum(1 for r in rows if results.get(r["id"], {}).get("result") == "survived"
                and r.get("survives", "").startswith("equivalent"))
    built = killed + survived - equiv
    score = f"{100.0 * killed / built:.1f}%" if built else "n/a"
    lines = [
        "# Mutants",
        "",
        "Deliberate bugs in `src/bpf`, one per row of `scripts/mutants.table`, each built in a",
        "private copy of the tree and run against the privileged test targets until the first",
        "failing test (`sudo ./scripts/mutants`; README, \"Mutation testing\"). *killed*: a test",
        "failed; *survived*: every test passed; *stillborn*: it does not build or does not",
        "verify. Written by the last run; a run with `--only` updates its rows; *run on*: the",
        "commit the row last ran on (`+`: with uncommitted changes; empty: before this column).",
        "",
        f"Last run: {started}. {len(rows)} mutants: " + ", ".join(
            f"{counts[k]} {k}" for k in ("killed", "survived", "stillborn", "stale", "not run")
            if counts.get(k)) + f" ({equiv} of the survivors equivalent). Killed of those that build, verify"
        f" and are not equivalent: **{score}** ({killed} of {built}).",
        "",
        "| mutant | result | by | file | breaks | run on |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = results.get(r["id"], {"result": "not run", "by": ""})
        by = res.get("by", "")
        if res["result"] == "killed":
            by = f"`{by}`"
        elif res["result"] == "survived" and r.get("survives"):
            by = r["survives"]
        lines.append(f"| `{r['id']}` | {res['result']} | {md_escape(by)} | {r['file']} | "
                     f"{md_escape(r['breaks'])} | {res.get('tree', '')} |")
    surv = [r for r in rows if results.get(r["id"], {}).get("result") == "survived"]
    lines += ["", "## Survivors", ""]
    if not surv:
        lines.append("None.")
    for r in surv:
        lines.append(f"- `{r['id']}`: {r.get('survives') or 'no reason recorded: a test is missing'}")
    with open(DOC, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(prog="scripts/mutants", description=__doc__.split("\n")[0])
    ap.add_argument("--only", metavar="PATTERN", action="append",
                    help="run only mutants whose name contains PATTERN (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="check that every row applies to the tree, and exit")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the clean run of the unmutated tree")
    ap.add_argument("--no-write", action="store_true", help="leave docs/MUTANTS.md alone")
    args = ap.parse_args()

    rows = parse_table(TABLE)
    if args.list:
        for r in rows:
            print(f"{r['id']:<36} {r['file']:<14} {r['breaks']}")
        return
    bad = check_rows(rows, ROOT)
    if bad:
        die("rows that do not apply to the tree:\n  " + "\n  ".join(bad))
    if args.check:
        print(f"{len(rows)} mutants, all apply")
        return
    if os.geteuid() != 0:
        die("the test targets need root and BPF: run with sudo")
    sel = rows
    if args.only:
        sel = [r for r in rows if any(p in r["id"] for p in args.only)]
        if not sel:
            die(f"no mutant matches {' '.join(args.only)}")

    os.makedirs(WORK, exist_ok=True)
    lock = open(os.path.join(WORK, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        die(f"another run holds {WORK}")
    seed = os.path.join(ROOT, "target", "release")
    if not os.path.isdir(os.path.join(TARGET, "release")) and os.path.isdir(seed):
        # Dependencies built once for the checkout serve the copy too.
        os.makedirs(TARGET, exist_ok=True)
        subprocess.run(["cp", "-a", "--reflink=auto", seed, os.path.join(TARGET, "release")],
                       check=True)

    def log(msg):
        print(msg, flush=True)

    sync_tree()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # The commit the copy was taken from ("+": with uncommitted changes),
    # so that every row of the report says which code it was run on.
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "tests"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    tree = head + ("+" if dirty else "")
    baseline = Baseline()
    if not args.no_baseline and baseline.data.get("hash") != source_hash():
        log("clean run of the unmutated tree (every target must pass)")
        baseline.run(TARGETS + sorted({t for r in sel for t in r["tests"] if t not in TARGETS}), log)

    results = read_doc()
    for i, r in enumerate(sel, 1):
        log(f"[{i}/{len(sel)}] {r['id']} ({r['file']}): {r['breaks']}")
        res = run_mutant(r, baseline, log)
        res["tree"] = tree
        results[r["id"]] = res
        log(f"    {res['result']} {res['by']} ({r['seconds']:.0f} s)"
            + (f"\n    {res['why']}" if res.get("why") else ""))
        if not args.no_write:
            write_doc(rows, results, started)
    surv = [r["id"] for r in sel if results[r["id"]]["result"] == "survived"]
    k = sum(results[r["id"]]["result"] == "killed" for r in sel)
    log(f"{len(sel)} run: {k} killed, {len(surv)} survived"
        + (": " + " ".join(surv) if surv else ""))


if __name__ == "__main__":
    main()
