//! Tests that try to get out of the workspace: lexically, through symlinks, and by
//! swapping a symlink in after the check.

mod util;

use std::fs;
use std::os::unix::fs::symlink;

use carapace_fs::SearchOptions;
use expect_test::{Expect, expect};
use util::Fixture;

fn check(fx: &Fixture, raw: &str, expect: Expect) {
    expect.assert_eq(&fx.show(fx.ws.check(raw).map(|p| p.to_string())));
}

#[test]
fn parent_components_in_every_position() {
    let fx = Fixture::new();
    check(
        &fx,
        "..",
        expect![[r#"
        Escape { path: ".." }
        path escapes the workspace: "..""#]],
    );
    check(
        &fx,
        "../x",
        expect![[r#"
        Escape { path: "../x" }
        path escapes the workspace: "../x""#]],
    );
    check(
        &fx,
        "a/../../x",
        expect![[r#"
        Escape { path: "a/../../x" }
        path escapes the workspace: "a/../../x""#]],
    );
    check(
        &fx,
        "./..",
        expect![[r#"
        Escape { path: "./.." }
        path escapes the workspace: "./..""#]],
    );
    check(
        &fx,
        "a/b/../../..",
        expect![[r#"
        Escape { path: "a/b/../../.." }
        path escapes the workspace: "a/b/../../..""#]],
    );
    // Stays inside, but `..` is refused all the same: the model gets one simple rule.
    check(
        &fx,
        "a/..",
        expect![[r#"
        InvalidPath { path: "a/..", reason: "`..` is not allowed" }
        invalid path "a/..": `..` is not allowed"#]],
    );
    check(
        &fx,
        "a/../b.txt",
        expect![[r#"
        InvalidPath { path: "a/../b.txt", reason: "`..` is not allowed" }
        invalid path "a/../b.txt": `..` is not allowed"#]],
    );
}

#[test]
fn absolute_paths() {
    let fx = Fixture::new();
    check(
        &fx,
        "/etc/passwd",
        expect![[r#"
        Escape { path: "/etc/passwd" }
        path escapes the workspace: "/etc/passwd""#]],
    );
    check(
        &fx,
        "/",
        expect![[r#"
        Escape { path: "/" }
        path escapes the workspace: "/""#]],
    );
    // The outside directory's name starts like the workspace's: still outside.
    let sibling = format!("{}x/a.txt", fx.root.display());
    assert!(matches!(
        fx.ws.check(&sibling),
        Err(carapace_fs::FsError::Escape { .. })
    ));
    // Inside the root: accepted, made relative.
    let inside = format!("{}/notes/a.txt", fx.root.display());
    check(&fx, &inside, expect![[r#""notes/a.txt""#]]);
    check(&fx, &fx.root.display().to_string(), expect![[r#"".""#]]);
    let through_parent = format!("{}/../outside/secret.txt", fx.root.display());
    assert!(matches!(
        fx.ws.check(&through_parent),
        Err(carapace_fs::FsError::Escape { .. })
    ));
}

#[test]
fn malformed_and_empty_paths() {
    let fx = Fixture::new();
    check(&fx, "", expect![[r#"".""#]]);
    check(&fx, ".", expect![[r#"".""#]]);
    check(&fx, "./notes//a.txt/", expect![[r#""notes/a.txt""#]]);
    check(
        &fx,
        "a\0b",
        expect![[r#"
        InvalidPath { path: "a\0b", reason: "contains a nul byte" }
        invalid path "a\0b": contains a nul byte"#]],
    );
    check(
        &fx,
        &format!("{}.txt", "n".repeat(300)),
        expect![[r#"
        InvalidPath { path: "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...", reason: "a component is longer than 255 bytes" }
        invalid path "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...": a component is longer than 255 bytes"#]],
    );
    let long = "d/".repeat(2100);
    assert!(matches!(
        fx.ws.check(&long),
        Err(carapace_fs::FsError::InvalidPath {
            reason: "longer than 4096 bytes",
            ..
        })
    ));
}

#[test]
fn symlink_to_a_file_outside() {
    let fx = Fixture::new();
    fx.link("passwd", "/etc/passwd");
    fx.link("secret.txt", fx.outside.join("secret.txt"));
    fx.link("rel-secret.txt", "../outside/secret.txt");
    for name in ["passwd", "secret.txt", "rel-secret.txt"] {
        let got = fx.show(fx.ws.read_file(&fx.path(name), 1024));
        assert_eq!(
            got.lines().next(),
            Some(format!("Escape {{ path: {name:?} }}").as_str())
        );
    }
    expect![[r#"
        Escape { path: "passwd" }
        path escapes the workspace: "passwd""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("passwd"), 1024)));
}

#[test]
fn symlink_to_a_directory_outside() {
    let fx = Fixture::new();
    fx.link("etc", "/etc");
    fx.link("out", &fx.outside);
    let before = fx.outside_tree();

    expect![[r#"
        Escape { path: "etc/passwd" }
        path escapes the workspace: "etc/passwd""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("etc/passwd"), 1024)));
    expect![[r#"
        Escape { path: "etc" }
        path escapes the workspace: "etc""#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&fx.path("etc"), 10)));
    expect![[r#"
        Escape { path: "out/x" }
        path escapes the workspace: "out/x""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("out/x"), b"pwned", false)));
    expect![[r#"
        Escape { path: "out/new/x" }
        path escapes the workspace: "out/new/x""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("out/new/x"), b"pwned", true)));
    expect![[r#"
        Escape { path: "out/secret.txt" }
        path escapes the workspace: "out/secret.txt""#]]
    .assert_eq(
        &fx.show(
            fx.ws
                .write_file(&fx.path("out/secret.txt"), b"pwned", false),
        ),
    );
    let opts = SearchOptions {
        case_insensitive: false,
        max_matches: 10,
        max_file_bytes: 1 << 20,
    };
    expect![[r#"
        Escape { path: "out" }
        path escapes the workspace: "out""#]]
    .assert_eq(&fx.show(fx.ws.search(&fx.path("out"), "secret", &opts)));

    assert_eq!(fx.outside_tree(), before);
}

#[test]
fn write_onto_a_symlink_is_refused() {
    let fx = Fixture::new();
    fx.link("secret.txt", fx.outside.join("secret.txt"));
    fx.file("real.txt", "real\n").link("alias.txt", "real.txt");
    let before = fx.outside_tree();

    expect![[r#"
        IsSymlink { path: "secret.txt" }
        refusing to write through a symlink: "secret.txt""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("secret.txt"), b"pwned", false)));
    // Even a symlink that stays inside: the write would not land where it seems to.
    expect![[r#"
        IsSymlink { path: "alias.txt" }
        refusing to write through a symlink: "alias.txt""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("alias.txt"), b"new", false)));

    assert_eq!(fx.outside_tree(), before);
    assert_eq!(
        fs::read_to_string(fx.root.join("real.txt")).unwrap(),
        "real\n"
    );
    assert!(
        fx.root
            .join("secret.txt")
            .symlink_metadata()
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn symlinks_inside_the_workspace_are_followed() {
    let fx = Fixture::new();
    fx.file("real.txt", "real\n")
        .file("sub/note.txt", "note\n")
        .link("alias.txt", "real.txt")
        .link("sub/up.txt", "../real.txt")
        .link("sub-alias", "sub");

    let read = |raw| fx.ws.read_file(&fx.path(raw), 1024).map(|f| f.text);
    assert_eq!(read("alias.txt").unwrap(), "real\n");
    assert_eq!(read("sub/up.txt").unwrap(), "real\n");
    assert_eq!(read("sub-alias/note.txt").unwrap(), "note\n");
    let listing = fx.ws.list_dir(&fx.path("sub-alias"), 10).unwrap();
    let names: Vec<_> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["note.txt", "up.txt"]);
    // Writing beneath a directory symlink that stays inside lands inside.
    fx.ws
        .write_file(&fx.path("sub-alias/new.txt"), b"new\n", false)
        .unwrap();
    assert_eq!(
        fs::read_to_string(fx.root.join("sub/new.txt")).unwrap(),
        "new\n"
    );
}

#[test]
fn absolute_symlink_into_the_workspace_is_refused() {
    // cap-std cannot tell an absolute target that happens to lie inside from one that
    // does not: resolution never starts over at `/`. Refusing is the safe answer.
    let fx = Fixture::new();
    fx.file("real.txt", "real\n")
        .link("abs.txt", fx.root.join("real.txt"));
    expect![[r#"
        Escape { path: "abs.txt" }
        path escapes the workspace: "abs.txt""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("abs.txt"), 1024)));
}

#[test]
fn swap_after_check() {
    // The TOCTOU test: the path passes the check, then a directory on it becomes a
    // symlink to the outside. The directory handle must refuse at use.
    let fx = Fixture::new();
    fx.file("sub/f.txt", "inside\n");
    fs::write(fx.outside.join("f.txt"), "outside\n").unwrap();
    let file = fx.ws.check("sub/f.txt").unwrap();
    let dir = fx.ws.check("sub").unwrap();
    assert_eq!(fx.ws.read_file(&file, 1024).unwrap().text, "inside\n");

    fs::rename(fx.root.join("sub"), fx.root.join("old-sub")).unwrap();
    symlink(&fx.outside, fx.root.join("sub")).unwrap();
    let before = fx.outside_tree();

    expect![[r#"
        Escape { path: "sub/f.txt" }
        path escapes the workspace: "sub/f.txt""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&file, 1024)));
    expect![[r#"
        Escape { path: "sub" }
        path escapes the workspace: "sub""#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&dir, 10)));
    expect![[r#"
        Escape { path: "sub/f.txt" }
        path escapes the workspace: "sub/f.txt""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&file, b"pwned", false)));
    assert_eq!(fx.outside_tree(), before);
}

#[test]
fn relative_symlink_chain_that_climbs_out() {
    let fx = Fixture::new();
    // d/a -> ../.. is the directory holding both the workspace and `outside`.
    fx.link("d/a", "../..")
        .link("b", "d/a")
        .link("c", "b/outside");
    for raw in [
        "d/a/outside/secret.txt",
        "b/outside/secret.txt",
        "c/secret.txt",
    ] {
        let got = fx.ws.read_file(&fx.path(raw), 1024);
        assert_eq!(
            got,
            Err(carapace_fs::FsError::Escape {
                path: raw.to_owned()
            }),
            "{raw}"
        );
    }
    expect![[r#"
        Escape { path: "c" }
        path escapes the workspace: "c""#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&fx.path("c"), 10)));
}

#[test]
fn symlink_loop_is_an_error_not_a_hang() {
    let fx = Fixture::new();
    fx.link("loop", "loop")
        .link("ping", "pong")
        .link("pong", "ping");
    expect![[r#"
        Io { path: "loop", kind: FilesystemLoop }
        filesystem loop or indirection limit (e.g. symlink loop): "loop""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("loop"), 1024)));
    assert!(fx.ws.read_file(&fx.path("ping"), 1024).is_err());
}

#[test]
fn fifo_is_not_a_file_and_does_not_block() {
    let fx = Fixture::new();
    let status = std::process::Command::new("mkfifo")
        .arg(fx.root.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    expect![[r#"
        NotAFile { path: "pipe" }
        not a regular file: "pipe""#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("pipe"), 1024)));
    let opts = SearchOptions {
        case_insensitive: false,
        max_matches: 10,
        max_file_bytes: 1 << 20,
    };
    assert_eq!(
        fx.ws
            .search(&fx.path("."), "x", &opts)
            .unwrap()
            .files_scanned,
        0
    );
}
