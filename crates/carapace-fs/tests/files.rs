//! read_file, list_dir and write_file inside the workspace.

mod util;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use carapace_fs::FsError;
use expect_test::expect;
use util::{Fixture, tree};

#[test]
fn read_whole_file() {
    let fx = Fixture::new();
    fx.file("notes/hello.txt", "hello\n");
    expect![[r#"
        FileContent {
            text: "hello\n",
            total_bytes: 6,
            truncated: false,
            sha256_hex: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        }"#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("notes/hello.txt"), 1024)));
}

#[test]
fn read_truncated() {
    let fx = Fixture::new();
    fx.file("hello.txt", "hello\n");
    // The hash is of the whole file, not of what was returned.
    expect![[r#"
        FileContent {
            text: "hel",
            total_bytes: 6,
            truncated: true,
            sha256_hex: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        }"#]]
    .assert_eq(&fx.show(fx.ws.read_file(&fx.path("hello.txt"), 3)));
    let exact = fx.ws.read_file(&fx.path("hello.txt"), 6).unwrap();
    assert!(!exact.truncated);
    let none = fx.ws.read_file(&fx.path("hello.txt"), 0).unwrap();
    assert_eq!((none.text.as_str(), none.truncated), ("", true));
}

#[test]
fn truncation_through_a_character_is_not_an_encoding_error() {
    let fx = Fixture::new();
    fx.file("accent.txt", "héllo");
    let got = fx.ws.read_file(&fx.path("accent.txt"), 2).unwrap();
    assert_eq!(
        (got.text.as_str(), got.total_bytes, got.truncated),
        ("h", 6, true)
    );
    // Invalid bytes beyond the limit are not looked at.
    fx.file("tail.bin", b"ok\xff\xfe");
    assert_eq!(fx.ws.read_file(&fx.path("tail.bin"), 2).unwrap().text, "ok");
}

#[test]
fn read_errors() {
    let fx = Fixture::new();
    fx.file("latin1.txt", b"caf\xe9\n").file("dir/a.txt", "a");
    let read = |raw| fx.show(fx.ws.read_file(&fx.path(raw), 1024));
    expect![[r#"
        NotUtf8 { path: "latin1.txt" }
        file is not valid utf-8 text: "latin1.txt""#]]
    .assert_eq(&read("latin1.txt"));
    expect![[r#"
        NotAFile { path: "dir" }
        not a regular file: "dir""#]]
    .assert_eq(&read("dir"));
    expect![[r#"
        NotAFile { path: "." }
        not a regular file: ".""#]]
    .assert_eq(&read("."));
    expect![[r#"
        NotFound { path: "missing.txt" }
        no such file or directory: "missing.txt""#]]
    .assert_eq(&read("missing.txt"));
    expect![[r#"
        NotADirectory { path: "dir/a.txt/x" }
        not a directory: "dir/a.txt/x""#]]
    .assert_eq(&read("dir/a.txt/x"));
}

#[test]
fn list_dir_sorted_with_kinds() {
    let fx = Fixture::new();
    fx.file("b.txt", "12345")
        .file("a.txt", "")
        .file("sub/inner.txt", "x")
        .link("link-out", &fx.outside)
        .link("link-in", "a.txt");
    let bad_name = fx.root.join(OsStr::from_bytes(b"bad-\xff.txt"));
    fs::write(bad_name, "?").unwrap();
    expect![[r#"
        Listing {
            entries: [
                DirEntry {
                    name: "a.txt",
                    name_is_utf8: true,
                    kind: File,
                    size: 0,
                },
                DirEntry {
                    name: "b.txt",
                    name_is_utf8: true,
                    kind: File,
                    size: 5,
                },
                DirEntry {
                    name: "bad-�.txt",
                    name_is_utf8: false,
                    kind: File,
                    size: 1,
                },
                DirEntry {
                    name: "link-in",
                    name_is_utf8: true,
                    kind: Symlink,
                    size: 0,
                },
                DirEntry {
                    name: "link-out",
                    name_is_utf8: true,
                    kind: Symlink,
                    size: 0,
                },
                DirEntry {
                    name: "sub",
                    name_is_utf8: true,
                    kind: Dir,
                    size: 0,
                },
            ],
            truncated: false,
        }"#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&fx.path(""), 100)));

    let short = fx.ws.list_dir(&fx.path("."), 2).unwrap();
    let names: Vec<_> = short.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!((names, short.truncated), (vec!["a.txt", "b.txt"], true));
    let exact = fx.ws.list_dir(&fx.path("."), 6).unwrap();
    assert!(!exact.truncated);
}

#[test]
fn list_dir_errors() {
    let fx = Fixture::new();
    fx.file("a.txt", "a");
    expect![[r#"
        NotADirectory { path: "a.txt" }
        not a directory: "a.txt""#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&fx.path("a.txt"), 10)));
    expect![[r#"
        NotFound { path: "nope" }
        no such file or directory: "nope""#]]
    .assert_eq(&fx.show(fx.ws.list_dir(&fx.path("nope"), 10)));
}

#[test]
fn write_creates_then_replaces() {
    let fx = Fixture::new();
    let path = fx.path("notes.txt");
    expect![[r#"
        WriteOutcome {
            bytes: 6,
            sha256_hex: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            created: true,
        }"#]]
    .assert_eq(&fx.show(fx.ws.write_file(&path, b"hello\n", false)));
    let again = fx.ws.write_file(&path, b"bye\n", false).unwrap();
    assert!(!again.created);
    // The hash matches what read_file reports, which is how provenance is keyed.
    assert_eq!(
        fx.ws.read_file(&path, 1024).unwrap().sha256_hex,
        again.sha256_hex
    );
    // No temporary file left behind.
    expect![[r#"
        notes.txt: "bye\n"
    "#]]
    .assert_eq(&tree(&fx.root));
}

#[test]
fn write_create_dirs() {
    let fx = Fixture::new();
    fx.file("a.txt", "a");
    expect![[r#"
        NotFound { path: "new/deeper" }
        no such file or directory: "new/deeper""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("new/deeper/x.txt"), b"x", false)));
    assert!(!fx.root.join("new").exists());

    fx.ws
        .write_file(&fx.path("new/deeper/x.txt"), b"x", true)
        .unwrap();
    expect![[r#"
        NotADirectory { path: "a.txt" }
        not a directory: "a.txt""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("a.txt/y.txt"), b"y", true)));
    expect![[r#"
        NotADirectory { path: "a.txt/sub" }
        not a directory: "a.txt/sub""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("a.txt/sub/y.txt"), b"y", true)));
    expect![[r#"
        a.txt: "a"
        new/
        new/deeper/
        new/deeper/x.txt: "x"
    "#]]
    .assert_eq(&tree(&fx.root));
}

#[test]
fn write_errors() {
    let fx = Fixture::new();
    fx.file("dir/a.txt", "a");
    let write = |raw| fx.show(fx.ws.write_file(&fx.path(raw), b"x", false));
    expect![[r#"
        NotAFile { path: "dir" }
        not a regular file: "dir""#]]
    .assert_eq(&write("dir"));
    expect![[r#"
        NotAFile { path: "." }
        not a regular file: ".""#]]
    .assert_eq(&write("."));
    expect![[r#"
        NotADirectory { path: "dir/a.txt" }
        not a directory: "dir/a.txt""#]]
    .assert_eq(&write("dir/a.txt/b"));
}

#[test]
fn write_keeps_the_file_mode_and_honours_read_only() {
    let fx = Fixture::new();
    fx.file("private.txt", "p").file("frozen.txt", "f");
    let mode = |name: &str| {
        fs::metadata(fx.root.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    fs::set_permissions(
        fx.root.join("private.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(
        fx.root.join("frozen.txt"),
        fs::Permissions::from_mode(0o444),
    )
    .unwrap();

    fx.ws
        .write_file(&fx.path("private.txt"), b"new", false)
        .unwrap();
    assert_eq!(mode("private.txt"), 0o600);
    expect![[r#"
        Io { path: "frozen.txt", kind: PermissionDenied }
        permission denied: "frozen.txt""#]]
    .assert_eq(&fx.show(fx.ws.write_file(&fx.path("frozen.txt"), b"new", false)));
    assert_eq!(fs::read_to_string(fx.root.join("frozen.txt")).unwrap(), "f");
}

#[test]
fn write_is_atomic() {
    // A reader racing the writer sees the old content or the new, never a mix or an
    // empty file.
    let fx = Fixture::new();
    let old = vec![b'o'; 256 * 1024];
    let new = vec![b'n'; 256 * 1024];
    let path = fx.path("big.txt");
    fx.ws.write_file(&path, &old, false).unwrap();
    let host = fx.root.join("big.txt");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let seen = fs::read(&host).unwrap();
                assert!(
                    seen == old || seen == new,
                    "torn read of {} bytes",
                    seen.len()
                );
            }
        });
        for i in 0..50 {
            let content = if i % 2 == 0 { &new } else { &old };
            fx.ws.write_file(&path, content, false).unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    let names: Vec<_> = fs::read_dir(&fx.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.txt"]);
}

#[test]
fn errors_are_typed() {
    let fx = Fixture::new();
    // Clone + Eq let callers compare and keep errors; no io::Error with host detail inside.
    let e = fx.ws.read_file(&fx.path("nope"), 1).unwrap_err();
    assert_eq!(
        e.clone(),
        FsError::NotFound {
            path: "nope".into()
        }
    );
}

#[test]
fn open_needs_an_existing_directory() {
    // These errors go to the owner, so naming the configured root is right here.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let e = carapace_fs::Workspace::open(&file).unwrap_err();
    assert_eq!(
        e,
        FsError::NotADirectory {
            path: file.display().to_string()
        }
    );
    let missing = tmp.path().join("missing");
    let e = carapace_fs::Workspace::open(&missing).unwrap_err();
    assert_eq!(
        e,
        FsError::NotFound {
            path: missing.display().to_string()
        }
    );
}
