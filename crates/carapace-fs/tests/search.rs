//! search: matches, order, limits, and what it refuses to look at.

mod util;

use carapace_fs::{SearchOptions, SearchResult};
use expect_test::{Expect, expect};
use util::Fixture;

fn opts(max_matches: usize) -> SearchOptions {
    SearchOptions {
        case_insensitive: false,
        max_matches,
        max_file_bytes: 1024,
    }
}

/// One line per match, then the totals: easier to read than the Debug of the result.
fn check(fx: &Fixture, path: &str, query: &str, opts: &SearchOptions, expect: Expect) {
    let shown = match fx.ws.search(&fx.path(path), query, opts) {
        Ok(SearchResult {
            matches,
            truncated,
            files_scanned,
        }) => {
            let mut out: String = matches
                .iter()
                .map(|m| format!("{}:{}: {}\n", m.path, m.line_number, m.line))
                .collect();
            out.push_str(&format!(
                "truncated={truncated} files_scanned={files_scanned}\n"
            ));
            out
        }
        Err(e) => fx.show::<()>(Err(e)),
    };
    expect.assert_eq(&shown);
}

/// A small tree with a needle in many places, some of which must not be searched.
fn fixture() -> Fixture {
    let fx = Fixture::new();
    std::fs::write(fx.outside.join("far.txt"), "needle outside\n").unwrap();
    fx.file("a.txt", "first line\na needle here\nNEEDLE upper\n")
        .file("a/b.txt", "needle in a/b\n")
        .file(
            "sub/deep/c.rs",
            "fn main() {}\n// needle\r\nneedle twice needle\n",
        )
        .file("binary.bin", b"needle\0\x01\x02")
        .file("big.txt", format!("needle\n{}", "x".repeat(2000)))
        .file("empty.txt", "")
        .link("out", &fx.outside)
        .link("alias.txt", "a.txt");
    fx
}

#[test]
fn finds_lines_in_path_order() {
    let fx = fixture();
    // "a.txt" sorts before "a/b.txt" ('.' < '/'); symlinks, the binary and the
    // over-large file are not searched.
    check(
        &fx,
        ".",
        "needle",
        &opts(100),
        expect![[r#"
        a.txt:2: a needle here
        a/b.txt:1: needle in a/b
        sub/deep/c.rs:2: // needle
        sub/deep/c.rs:3: needle twice needle
        truncated=false files_scanned=4
    "#]],
    );
}

#[test]
fn case_insensitive() {
    let fx = fixture();
    let opts = SearchOptions {
        case_insensitive: true,
        ..opts(100)
    };
    check(
        &fx,
        "",
        "NeEdLe",
        &opts,
        expect![[r#"
        a.txt:2: a needle here
        a.txt:3: NEEDLE upper
        a/b.txt:1: needle in a/b
        sub/deep/c.rs:2: // needle
        sub/deep/c.rs:3: needle twice needle
        truncated=false files_scanned=4
    "#]],
    );
}

#[test]
fn max_matches_truncates() {
    let fx = fixture();
    check(
        &fx,
        ".",
        "needle",
        &opts(2),
        expect![[r#"
        a.txt:2: a needle here
        a/b.txt:1: needle in a/b
        truncated=true files_scanned=4
    "#]],
    );
    // Exactly as many matches as allowed is not truncated.
    check(
        &fx,
        ".",
        "needle",
        &opts(4),
        expect![[r#"
        a.txt:2: a needle here
        a/b.txt:1: needle in a/b
        sub/deep/c.rs:2: // needle
        sub/deep/c.rs:3: needle twice needle
        truncated=false files_scanned=4
    "#]],
    );
}

#[test]
fn search_below_a_path_or_in_one_file() {
    let fx = fixture();
    check(
        &fx,
        "sub",
        "needle",
        &opts(100),
        expect![[r#"
        sub/deep/c.rs:2: // needle
        sub/deep/c.rs:3: needle twice needle
        truncated=false files_scanned=1
    "#]],
    );
    check(
        &fx,
        "a.txt",
        "needle",
        &opts(100),
        expect![[r#"
        a.txt:2: a needle here
        truncated=false files_scanned=1
    "#]],
    );
    // Named explicitly, a symlink inside the workspace is followed, like read_file.
    check(
        &fx,
        "alias.txt",
        "needle",
        &opts(100),
        expect![[r#"
        alias.txt:2: a needle here
        truncated=false files_scanned=1
    "#]],
    );
    check(
        &fx,
        "binary.bin",
        "needle",
        &opts(100),
        expect![[r#"
        truncated=false files_scanned=0
    "#]],
    );
}

#[test]
fn search_refuses_the_outside() {
    let fx = fixture();
    check(
        &fx,
        "out",
        "needle",
        &opts(100),
        expect![[r#"
        Escape { path: "out" }
        path escapes the workspace: "out""#]],
    );
    check(
        &fx,
        "missing",
        "needle",
        &opts(100),
        expect![[r#"
        NotFound { path: "missing" }
        no such file or directory: "missing""#]],
    );
}

#[test]
fn long_lines_are_cut_around_the_match() {
    let fx = Fixture::new();
    fx.file(
        "min.js",
        format!("{}needle{}\n", "a".repeat(500), "b".repeat(500)),
    );
    let found = fx.ws.search(&fx.path("."), "needle", &opts(10)).unwrap();
    let line = &found.matches[0].line;
    assert_eq!(line.chars().count(), 300);
    assert_eq!(
        line,
        &format!("{}needle{}", "a".repeat(100), "b".repeat(194))
    );
}
