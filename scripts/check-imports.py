#!/usr/bin/env python3
"""Check the grouping of `use` statements in Shoal's Rust sources.

Within every contiguous block of `use` statements at module level (the top of a file and
the body of any inline `mod name { ... }`, such as `mod tests`), imports must come in three
groups, in this order, each group separated from the next by exactly one blank line and with
no blank line inside a group:

  1. the standard library: `std`, `core`, `alloc`;
  2. external crates;
  3. this workspace: `shoal_*` and the workspace's other crates, `crate::`, `super::`,
     `self::`, and names declared in the same module (e.g. `pub use ident::quote_ident;`
     after `mod ident;`).

A block is a run of `use` statements (including `pub use`, multi-line `use a::{...};` and
uses carrying attributes such as `#[cfg(test)]`) with only blank lines, comments and
attributes between them; any other item (a `mod` declaration, a `fn`, a macro call, ...)
ends the block. Uses inside function bodies are not checked.

Usage:
  check-imports.py [PATH ...]   check the given files/directories (default: crates/, xtask/,
                                benches/ under the repository root)
  check-imports.py --self-test  run the built-in test cases

Prints `path:line: message` for every violation and exits 1, or prints
`imports: ok (N files)` and exits 0.
"""

import os
import re
import sys

STD_ROOTS = {"std", "core", "alloc"}
LOCAL_KEYWORDS = {"crate", "self", "super"}
WORKSPACE_PREFIX = "shoal_"
GROUP_NAMES = {0: "std", 1: "external", 2: "workspace"}
DEFAULT_DIRS = ("crates", "xtask", "benches")
SKIP_DIRS = {"target", ".git"}
# Item keywords after which the next identifier is a name declared in the module.
DECL_KEYWORDS = {"struct", "enum", "union", "trait", "type", "fn", "const", "static", "mod"}


class LexError(Exception):
    def __init__(self, line, message):
        super().__init__(message)
        self.line = line


class Tok:
    __slots__ = ("kind", "text", "line")

    def __init__(self, kind, text, line):
        self.kind = kind  # "ident", "punct", "lit", "lifetime"
        self.text = text
        self.line = line

    def __repr__(self):
        return f"Tok({self.kind}, {self.text!r}, {self.line})"


def _is_ident_start(c):
    return c == "_" or c.isalpha()


def _is_ident_char(c):
    return c == "_" or c.isalnum()


def tokenize(src):
    """A small Rust lexer: enough to skip comments and literals and see braces and items."""
    toks = []
    i = 0
    n = len(src)
    line = 1

    def scan_quoted(i, quote, start_line):
        # i points just after the opening quote; returns index after the closing quote.
        nonlocal line
        while i < n:
            c = src[i]
            if c == "\\":
                if i + 1 < n and src[i + 1] == "\n":
                    line += 1
                i += 2
                continue
            if c == "\n":
                line += 1
            elif c == quote:
                return i + 1
            i += 1
        raise LexError(start_line, "unterminated string literal")

    def scan_raw(i, hashes, start_line):
        # i points just after the opening quote of r#"..."#.
        nonlocal line
        end = '"' + "#" * hashes
        j = src.find(end, i)
        if j < 0:
            raise LexError(start_line, "unterminated raw string literal")
        line += src.count("\n", i, j)
        return j + len(end)

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            start_line = line
            depth = 1
            i += 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth += 1
                    i += 2
                elif src.startswith("*/", i):
                    depth -= 1
                    i += 2
                else:
                    if src[i] == "\n":
                        line += 1
                    i += 1
            if depth:
                raise LexError(start_line, "unterminated block comment")
            continue
        if _is_ident_start(c):
            j = i
            while j < n and _is_ident_char(src[j]):
                j += 1
            word = src[i:j]
            # Raw strings: r"..", r#".."#, br"..", cr#".."#
            if word in ("r", "br", "cr") and j < n and src[j] in "#\"":
                k = j
                while k < n and src[k] == "#":
                    k += 1
                if k < n and src[k] == '"':
                    start_line = line
                    i = scan_raw(k + 1, k - j, start_line)
                    toks.append(Tok("lit", "<str>", start_line))
                    continue
                if word == "r" and k == j + 1 and k < n and _is_ident_start(src[k]):
                    # Raw identifier r#name.
                    m = k
                    while m < n and _is_ident_char(src[m]):
                        m += 1
                    toks.append(Tok("ident", src[k:m], line))
                    i = m
                    continue
            # Byte / C strings and byte chars: b"..", c"..", b'x'
            if word in ("b", "c") and j < n and src[j] == '"':
                start_line = line
                i = scan_quoted(j + 1, '"', start_line)
                toks.append(Tok("lit", "<str>", start_line))
                continue
            if word == "b" and j < n and src[j] == "'":
                start_line = line
                i = scan_quoted(j + 1, "'", start_line)
                toks.append(Tok("lit", "<char>", start_line))
                continue
            toks.append(Tok("ident", word, line))
            i = j
            continue
        if c.isdigit():
            j = i
            while j < n and (_is_ident_char(src[j])):
                j += 1
            toks.append(Tok("lit", src[i:j], line))
            i = j
            continue
        if c == '"':
            start_line = line
            i = scan_quoted(i + 1, '"', start_line)
            toks.append(Tok("lit", "<str>", start_line))
            continue
        if c == "'":
            # Char literal or lifetime / loop label.
            if i + 1 < n and src[i + 1] == "\\":
                start_line = line
                i = scan_quoted(i + 1, "'", start_line)
                toks.append(Tok("lit", "<char>", start_line))
                continue
            if i + 2 < n and src[i + 2] == "'" and src[i + 1] != "\n":
                toks.append(Tok("lit", "<char>", line))
                i += 3
                continue
            j = i + 1
            while j < n and _is_ident_char(src[j]):
                j += 1
            if j == i + 1:
                raise LexError(line, "stray quote")
            toks.append(Tok("lifetime", src[i:j], line))
            i = j
            continue
        toks.append(Tok("punct", c, line))
        i += 1
    return toks


class Use:
    def __init__(self, start_line, end_line, body, roots):
        self.start_line = start_line  # first line, including attributes
        self.use_line = None  # line of the `use` keyword
        self.end_line = end_line  # line of the terminating `;`
        self.body = body  # tokens between `use` and `;`
        self.roots = roots  # first path segments (several for `use {a::b, c::d};`)

    def text(self):
        out = ""
        prev = None
        for t in self.body:
            if prev is not None and prev.kind == "ident" and t.kind == "ident":
                out += " "
            out += t.text
            if t.text == ",":
                out += " "
            prev = t
        return out


class Scope:
    """The items of one module body: a list of entries, each a Use or the marker BREAK."""

    def __init__(self, parent=None):
        self.entries = []
        self.declared = set()
        self.parent = parent

    def visible_names(self):
        # Names declared here or in an enclosing module (reachable through `use super::*`).
        names = set()
        scope = self
        while scope is not None:
            names |= scope.declared
            scope = scope.parent
        return names


BREAK = object()
OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")", "]", "}"}


def _skip_balanced(toks, i):
    """toks[i] is an opener; return the index just after its matching closer."""
    depth = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        if t.kind == "punct":
            if t.text in OPENERS:
                depth += 1
            elif t.text in CLOSERS:
                depth -= 1
                if depth == 0:
                    return i + 1
        i += 1
    raise LexError(toks[-1].line if toks else 1, "unbalanced brackets")


def _use_roots(body):
    """First path segment(s) of a use tree (tokens after `use`, before `;`)."""
    i = 0
    if len(body) >= 2 and body[0].text == ":" and body[1].text == ":":
        i = 2  # `use ::serde::X;`
    if i < len(body) and body[i].text == "{":
        # `use {a::b, c::d};`: the roots of each top-level tree.
        roots = []
        depth = 0
        expect_root = True
        for t in body[i:]:
            if t.kind == "punct" and t.text in OPENERS:
                depth += 1
                continue
            if t.kind == "punct" and t.text in CLOSERS:
                depth -= 1
                continue
            if depth == 1 and t.text == ",":
                expect_root = True
                continue
            if depth == 1 and expect_root and t.text != ":":
                if t.kind == "ident":
                    roots.append(t.text)
                expect_root = False
        return roots
    if i < len(body) and body[i].kind == "ident":
        return [body[i].text]
    return []


def parse_scope(toks, i, scopes, parent=None):
    """Parse module items from toks[i]; append Scope objects (this one and nested mods)."""
    nested = parent is not None
    scope = Scope(parent)
    scopes.append(scope)
    n = len(toks)
    while i < n:
        t = toks[i]
        if t.kind == "punct" and t.text == "}":
            if nested:
                return i + 1
            raise LexError(t.line, "unbalanced `}`")
        if t.kind == "punct" and t.text == ";":
            i += 1  # stray `;` (e.g. after `const X: T = T { .. };`)
            continue
        start = i
        # Inner attributes `#![...]` belong to the module, not to an item.
        if (
            t.text == "#"
            and i + 2 < n
            and toks[i + 1].text == "!"
            and toks[i + 2].text == "["
        ):
            i = _skip_balanced(toks, i + 2)
            continue
        # Outer attributes.
        while i + 1 < n and toks[i].text == "#" and toks[i + 1].text == "[":
            i = _skip_balanced(toks, i + 1)
        if i >= n:
            break
        k = i
        if toks[k].text == "pub":
            k += 1
            if k < n and toks[k].text == "(":
                k = _skip_balanced(toks, k)
        if k < n and toks[k].kind == "ident" and toks[k].text == "use":
            j = k + 1
            depth = 0
            while j < n:
                tj = toks[j]
                if tj.kind == "punct":
                    if tj.text in OPENERS:
                        depth += 1
                    elif tj.text in CLOSERS:
                        depth -= 1
                    elif tj.text == ";" and depth == 0:
                        break
                j += 1
            if j >= n:
                raise LexError(toks[k].line, "unterminated use statement")
            body = toks[k + 1 : j]
            use = Use(toks[start].line, toks[j].line, body, _use_roots(body))
            use.use_line = toks[k].line
            scope.entries.append(use)
            i = j + 1
            continue
        # Any other item ends the current block of uses.
        scope.entries.append(BREAK)
        # Inline module: recurse into its body.
        if (
            k + 2 < n
            and toks[k].text == "mod"
            and toks[k + 1].kind == "ident"
            and toks[k + 2].text == "{"
        ):
            scope.declared.add(toks[k + 1].text)
            i = parse_scope(toks, k + 3, scopes, scope)
            continue
        # Generic item: runs to a `;` at depth 0 or to the `}` closing its body.
        j = k
        depth = 0
        prev = None
        while j < n:
            tj = toks[j]
            if depth == 0 and prev is not None and prev.kind == "ident":
                if prev.text in DECL_KEYWORDS and tj.kind == "ident":
                    scope.declared.add(tj.text)
            if tj.kind == "punct":
                if tj.text in OPENERS:
                    depth += 1
                elif tj.text in CLOSERS:
                    if depth == 0:
                        break  # the enclosing module's `}`: leave it to the caller
                    depth -= 1
                    if depth == 0 and tj.text == "}":
                        j += 1
                        break
                elif tj.text == ";" and depth == 0:
                    j += 1
                    break
            prev = tj
            j += 1
        i = max(j, k + 1)
    if nested:
        raise LexError(toks[-1].line if toks else 1, "unterminated `mod { ... }`")
    return i


def classify(root, declared, workspace_crates):
    if root in STD_ROOTS:
        return 0
    if (
        root in LOCAL_KEYWORDS
        or root.startswith(WORKSPACE_PREFIX)
        or root in workspace_crates
        or root in declared
    ):
        return 2
    return 1


def check_source(src, workspace_crates=()):
    """Return a sorted list of (line, message) violations for one file's text."""
    try:
        toks = tokenize(src)
        scopes = []
        parse_scope(toks, 0, scopes)
    except LexError as e:
        return [(e.line, f"could not parse file: {e}")]
    lines = src.split("\n")

    def blank_lines_between(a, b):
        # Blank lines strictly between line a and line b (1-based).
        return sum(1 for ln in range(a + 1, b) if not lines[ln - 1].strip())

    errors = []
    workspace_crates = set(workspace_crates)
    for scope in scopes:
        declared = scope.visible_names()
        blocks = [[]]
        for entry in scope.entries:
            if entry is BREAK:
                if blocks[-1]:
                    blocks.append([])
            else:
                blocks[-1].append(entry)
        for block in blocks:
            prev = None
            prev_group = None
            for use in block:
                groups = sorted(
                    {classify(r, declared, workspace_crates) for r in use.roots}
                )
                if not groups:
                    errors.append((use.use_line, f"cannot classify import `use {use.text()}`"))
                    continue
                if len(groups) > 1:
                    names = " and ".join(GROUP_NAMES[g] for g in groups)
                    errors.append(
                        (
                            use.use_line,
                            f"`use {use.text()}` mixes {names} imports in one statement;"
                            " split it by group",
                        )
                    )
                group = groups[0]
                if prev is not None:
                    blanks = blank_lines_between(prev.end_line, use.start_line)
                    if group < prev_group:
                        errors.append(
                            (
                                use.use_line,
                                f"{GROUP_NAMES[group]} import `use {use.text()}` comes after"
                                f" {GROUP_NAMES[prev_group]} imports; order is std, external,"
                                " workspace",
                            )
                        )
                    elif group == prev_group:
                        if blanks:
                            errors.append(
                                (
                                    use.start_line,
                                    f"blank line inside the {GROUP_NAMES[group]} import group"
                                    f" (before `use {use.text()}`)",
                                )
                            )
                    else:
                        if blanks == 0:
                            errors.append(
                                (
                                    use.start_line,
                                    f"missing blank line between {GROUP_NAMES[prev_group]} and"
                                    f" {GROUP_NAMES[group]} imports (before `use {use.text()}`)",
                                )
                            )
                        elif blanks > 1:
                            errors.append(
                                (
                                    use.start_line,
                                    f"{blanks} blank lines between {GROUP_NAMES[prev_group]} and"
                                    f" {GROUP_NAMES[group]} imports; use exactly one",
                                )
                            )
                prev = use
                prev_group = max(group, prev_group) if prev_group is not None else group
    return sorted(set(errors))


def workspace_crate_names(root):
    """Library names (with `_`) of the packages under crates/ and xtask/."""
    names = set()
    manifests = []
    crates_dir = os.path.join(root, "crates")
    if os.path.isdir(crates_dir):
        for d in sorted(os.listdir(crates_dir)):
            manifests.append(os.path.join(crates_dir, d, "Cargo.toml"))
    manifests.append(os.path.join(root, "xtask", "Cargo.toml"))
    for path in manifests:
        if not os.path.isfile(path):
            continue
        section = None
        with open(path, encoding="utf-8") as f:
            for raw in f:
                s = raw.strip()
                m = re.match(r"^\[([^\]]+)\]$", s)
                if m:
                    section = m.group(1).strip()
                    continue
                m = re.match(r'^name\s*=\s*"([^"]+)"', s)
                if m and section in ("package", "lib"):
                    names.add(m.group(1).replace("-", "_"))
    return names


def rust_files(paths):
    for p in paths:
        if os.path.isfile(p):
            if p.endswith(".rs"):
                yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                if name.endswith(".rs"):
                    yield os.path.join(dirpath, name)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv and argv[0] == "--self-test":
        return self_test()
    if argv:
        paths = argv
        rel_base = os.getcwd()
    else:
        paths = [os.path.join(root, d) for d in DEFAULT_DIRS if os.path.isdir(os.path.join(root, d))]
        rel_base = root
    crates = workspace_crate_names(root)
    count = 0
    failures = 0
    for path in rust_files(paths):
        count += 1
        with open(path, encoding="utf-8") as f:
            src = f.read()
        shown = os.path.relpath(path, rel_base)
        for line, message in check_source(src, crates):
            print(f"{shown}:{line}: {message}")
            failures += 1
    if failures:
        print(f"imports: {failures} problem(s) in {count} files", file=sys.stderr)
        return 1
    print(f"imports: ok ({count} files)")
    return 0


# --------------------------------------------------------------------------------------------
# Self-test

GOOD = '''\
//! Crate docs mention use std::fmt; in prose.
#![allow(dead_code)]

use std::collections::{
    BTreeMap,
    HashMap,
};
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

// External crates.
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::ident::QualifiedName;
use shoal_sql::quote_literal;
use super::parent;

mod ident;
mod names;

pub use ident::quote_ident;
pub use names::{derived_name, MAX_IDENTIFIER_BYTES};

const TEXT: &str = r#"
use tokio::x;
use std::y;
"#;
const BRACE: char = '{';
const CLOSE: char = '}';
const Q: char = '\\'';
static S: &str = "}{ use serde::x; \\" }";

fn f<'a>(x: &'a str) -> &'a str {
    use tokio::inner;
    use std::inner2;
    x
}

pub enum Kind {
    A,
    B,
}

use Kind::*;

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use serde_json::json;

    use super::*;

    #[test]
    fn it_works() {}
}
'''

CASES = [
    ("good file passes", GOOD, []),
    (
        "wrong order fails",
        "use serde::Serialize;\n\nuse std::fmt;\n",
        [(3, "comes after external")],
    ),
    (
        "missing blank line fails",
        "use std::fmt;\nuse serde::Serialize;\n\nuse crate::x;\n",
        [(2, "missing blank line between std and external")],
    ),
    (
        "mixed groups fail",
        "use std::fmt;\nuse serde::Serialize;\nuse std::sync::Arc;\n",
        [(2, "missing blank line"), (3, "comes after external")],
    ),
    (
        "one statement mixing groups fails",
        "use {std::fmt, serde::Serialize};\n",
        [(1, "mixes std and external")],
    ),
    (
        "blank line inside a group fails",
        "use std::fmt;\n\nuse std::sync::Arc;\n",
        [(3, "blank line inside the std import group")],
    ),
    (
        "two blank lines between groups fail",
        "use std::fmt;\n\n\nuse serde::Serialize;\n",
        [(4, "2 blank lines")],
    ),
    (
        "multi-line use handled",
        "use std::{\n    fmt,\n\n    sync::Arc,\n};\n\nuse serde::{\n    Deserialize,\n    Serialize,\n};\n"
        "use crate::{\n    a,\n    b,\n};\n",
        [(11, "missing blank line between external and workspace")],
    ),
    (
        "attributed use counts from its attribute",
        "use std::fmt;\n#[cfg(test)]\nuse serde::Serialize;\n\n#[cfg(unix)]\n#[allow(unused)]\n"
        "use crate::x;\n",
        [(2, "missing blank line")],
    ),
    (
        "mod tests is checked",
        "fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n    use std::fmt;\n}\n",
        [(7, "comes after workspace")],
    ),
    (
        "mod lines end a block",
        "use std::fmt;\n\nuse crate::a;\n\nmod b;\n\npub use b::X;\nuse serde::Y;\n",
        [(8, "comes after workspace")],
    ),
    (
        "names from the parent module are local in mod tests",
        "enum Kind {\n    A,\n}\n\n#[cfg(test)]\nmod tests {\n    use serde_json::json;\n\n"
        "    use super::*;\n    use Kind::A;\n}\n",
        [],
    ),
    (
        "workspace crate names count as workspace",
        "use std::fmt;\n\nuse tokio::x;\n\nuse shoal_catalog::Catalog;\nuse other_ws::Thing;\n",
        [],
    ),
]


def self_test():
    failed = 0
    for name, src, expected in CASES:
        got = check_source(src, {"other_ws"})
        ok = len(got) == len(expected) and all(
            gl == el and frag in gm for (gl, gm), (el, frag) in zip(got, expected)
        )
        if ok:
            print(f"ok      {name}")
        else:
            failed += 1
            print(f"FAILED  {name}")
            print(f"        expected: {expected}")
            print(f"        got:      {got}")
    if failed:
        print(f"self-test: {failed} of {len(CASES)} cases failed")
        return 1
    print(f"self-test: {len(CASES)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
