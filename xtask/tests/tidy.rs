//! Tidy checks as tests. For each rule one test runs the check on the real tree and one
//! runs it on small in-memory trees that break the rule, so each check is shown able to
//! fail. Rules and reasons: `xtask/src/lib.rs`, `STYLE.md` ("Tidy checks are tests").

use std::path::Path;

use expect_test::{Expect, expect};
use xtask::{Rule, Tree, Violation};

type Check = fn(&Tree) -> Vec<Violation>;

/// Runs `check` on the workspace this crate lives in and fails listing every violation.
fn check_real_tree(rule: Rule, check: Check) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent");
    let tree = Tree::load(root).expect("cannot read the workspace");
    let violations = check(&tree);
    let list: String = violations.iter().map(|v| format!("  {v}\n")).collect();
    assert!(
        violations.is_empty(),
        "tidy rule [{rule}] is broken:\n{list}"
    );
}

/// Runs `check` on an in-memory tree and compares its violations, one a line.
fn check_example(check: Check, files: Vec<(String, String)>, expect: Expect) {
    let tree = Tree::from_files(files);
    let actual: String = check(&tree).iter().map(|v| format!("{v}\n")).collect();
    expect.assert_eq(&actual);
}

fn file(path: &str, text: &str) -> (String, String) {
    (path.to_owned(), text.to_owned())
}

/// A well-formed `crates/{name}/Cargo.toml` followed by `rest`.
fn member(name: &str, rest: &str) -> (String, String) {
    let text = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\npublish = false\n\n\
         [lints]\nworkspace = true\n\n{rest}"
    );
    (format!("crates/{name}/Cargo.toml"), text)
}

const ROOT: &str = r#"
[workspace]
resolver = "3"
members = ["crates/*", "xtask"]

[workspace.lints.rust]
unsafe_code = "forbid"
missing_docs = "warn"

[workspace.lints.clippy]
todo = "warn"
"#;

#[test]
fn dependency_directions() {
    check_real_tree(
        Rule::DependencyDirections,
        xtask::check_dependency_directions,
    );
}

#[test]
fn dependency_directions_examples() {
    let root = r#"
[workspace]
members = ["crates/*", "xtask"]

[workspace.dependencies]
pol = { path = "crates/carapace-policy", package = "carapace-policy" }
"#;
    check_example(
        xtask::check_dependency_directions,
        vec![
            file("Cargo.toml", root),
            member(
                "carapace-store",
                "[dependencies]\ncarapace-policy.workspace = true\n",
            ),
            member(
                "carapace-llm",
                "[dev-dependencies]\ncarapace-policy.workspace = true\n",
            ),
            member(
                "carapace-fs",
                "[target.'cfg(unix)'.dependencies]\n\
                 p = { path = \"../carapace-policy\", package = \"carapace-policy\" }\n",
            ),
            member("carapace-vault", "[dependencies]\npol.workspace = true\n"),
            member(
                "carapace-types",
                "[dependencies]\nserde_json = \"1\"\ntokio = \"1\"\n\
                 [build-dependencies]\nhyper = \"1\"\n\
                 [dev-dependencies]\ncarapace-store.workspace = true\nreqwest = \"0.12\"\n",
            ),
            member(
                "carapace-policy",
                "[dependencies]\ncarapace-types.workspace = true\nserde = \"1\"\ntokio = \"1\"\n\
                 [dev-dependencies]\nexpect-test = \"1\"\n",
            ),
            // The gate and the binary may depend on policy.
            member(
                "carapace-gate",
                "[dependencies]\ncarapace-policy.workspace = true\n",
            ),
            member("cara", "[dependencies]\ncarapace-policy.workspace = true\n"),
        ],
        expect![[r#"
            crates/carapace-store/Cargo.toml: [dependency-directions] mechanism crate carapace-store depends on carapace-policy in [dependencies]; it must take resolved input or a trait instead
            crates/carapace-llm/Cargo.toml: [dependency-directions] mechanism crate carapace-llm depends on carapace-policy in [dev-dependencies]; it must take resolved input or a trait instead
            crates/carapace-fs/Cargo.toml: [dependency-directions] mechanism crate carapace-fs depends on carapace-policy in [target.'cfg(unix)'.dependencies]; it must take resolved input or a trait instead
            crates/carapace-vault/Cargo.toml: [dependency-directions] mechanism crate carapace-vault depends on carapace-policy in [dependencies]; it must take resolved input or a trait instead
            crates/carapace-types/Cargo.toml: [dependency-directions] carapace-types depends on tokio in [dependencies]; the vocabulary does no IO
            crates/carapace-types/Cargo.toml: [dependency-directions] carapace-types depends on carapace-store in [dev-dependencies]; the vocabulary depends on no other carapace crate
            crates/carapace-types/Cargo.toml: [dependency-directions] carapace-types depends on hyper in [build-dependencies]; the vocabulary does no IO
            crates/carapace-policy/Cargo.toml: [dependency-directions] carapace-policy depends on tokio in [dependencies]; policy is pure and depends only on carapace-types, serde and serde_json
        "#]],
    );
}

#[test]
fn executors_only_from_gate() {
    check_real_tree(
        Rule::ExecutorsOnlyFromGate,
        xtask::check_executors_only_from_gate,
    );
}

#[test]
fn executors_only_from_gate_examples() {
    check_example(
        xtask::check_executors_only_from_gate,
        vec![
            member(
                "carapace-gate",
                "[dependencies]\ncarapace-fs.workspace = true\ncarapace-sandbox.workspace = true\n\
                 carapace-testkit.workspace = true\n",
            ),
            member(
                "carapace-agent",
                "[dependencies]\ncarapace-fs.workspace = true\n\
                 [dev-dependencies]\ncarapace-sandbox.workspace = true\n\
                 carapace-testkit.workspace = true\n",
            ),
            member(
                "cara",
                "[target.'cfg(unix)'.dependencies]\ncarapace-egress = \"0.0.0\"\n",
            ),
            member(
                "carapace-store",
                "[build-dependencies]\ncarapace-fs.workspace = true\n",
            ),
            member(
                "carapace-server",
                "[dependencies]\ncarapace-testkit.workspace = true\n",
            ),
        ],
        expect![[r#"
            crates/carapace-gate/Cargo.toml: [executors-only-from-gate] carapace-gate depends on carapace-testkit in [dependencies]; it belongs in [dev-dependencies] only
            crates/carapace-agent/Cargo.toml: [executors-only-from-gate] carapace-agent depends on executor crate carapace-fs in [dependencies]; only carapace-gate may, other crates only in [dev-dependencies]
            crates/cara/Cargo.toml: [executors-only-from-gate] cara depends on executor crate carapace-egress in [target.'cfg(unix)'.dependencies]; only carapace-gate may, other crates only in [dev-dependencies]
            crates/carapace-store/Cargo.toml: [executors-only-from-gate] carapace-store depends on executor crate carapace-fs in [build-dependencies]; only carapace-gate may, other crates only in [dev-dependencies]
            crates/carapace-server/Cargo.toml: [executors-only-from-gate] carapace-server depends on carapace-testkit in [dependencies]; it belongs in [dev-dependencies] only
        "#]],
    );
}

#[test]
fn unsafe_only_in_sandbox() {
    check_real_tree(
        Rule::UnsafeOnlyInSandbox,
        xtask::check_unsafe_only_in_sandbox,
    );
}

#[test]
fn unsafe_only_in_sandbox_examples() {
    let outside = r##"//! Not the sandbox.
// unsafe in a comment, /* and */ unsafe in a block comment
const S: &str = "unsafe \" unsafe";
const R: &str = r#"unsafe " unsafe"#;
#![forbid(unsafe_code)]
unsafe fn f() {}
unsafe impl Send for X {}
const C: char = '"'; fn g() { unsafe { f() } }
fn h<'a>(x: &'a str) { 'outer: loop { unsafe {} } }
"##;
    let sandbox = r#"//! The sandbox.
// SAFETY: the fd is open and owned by us.
let a = unsafe { f() };

fn g() {
    unsafe { h() }
}
unsafe fn k() {}
// SAFETY: three lines above is close enough.
//
//
unsafe { k() }
let s = "// SAFETY: a string is not a comment"; unsafe { k() }
"#;
    check_example(
        xtask::check_unsafe_only_in_sandbox,
        vec![
            file("Cargo.toml", ROOT),
            file("crates/carapace-fs/src/lib.rs", outside),
            file("crates/carapace-fs/tests/it.rs", "fn t() { unsafe {} }"),
            file("xtask/src/main.rs", "unsafe extern \"C\" {}"),
            file("crates/carapace-sandbox/src/lib.rs", sandbox),
        ],
        expect![[r#"
            crates/carapace-fs/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` at line 6; unsafe code is allowed only in crates/carapace-sandbox/
            crates/carapace-fs/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` at line 7; unsafe code is allowed only in crates/carapace-sandbox/
            crates/carapace-fs/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` at line 8; unsafe code is allowed only in crates/carapace-sandbox/
            crates/carapace-fs/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` at line 9; unsafe code is allowed only in crates/carapace-sandbox/
            crates/carapace-fs/tests/it.rs: [unsafe-only-in-sandbox] `unsafe` at line 1; unsafe code is allowed only in crates/carapace-sandbox/
            xtask/src/main.rs: [unsafe-only-in-sandbox] `unsafe` at line 1; unsafe code is allowed only in crates/carapace-sandbox/
            crates/carapace-sandbox/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` block at line 6 has no `// SAFETY:` comment in the 3 lines above
            crates/carapace-sandbox/src/lib.rs: [unsafe-only-in-sandbox] `unsafe` block at line 13 has no `// SAFETY:` comment in the 3 lines above
        "#]],
    );
    let lax_root = ROOT.replace(r#"unsafe_code = "forbid""#, r#"unsafe_code = "deny""#);
    check_example(
        xtask::check_unsafe_only_in_sandbox,
        vec![file("Cargo.toml", &lax_root)],
        expect![[r#"
            Cargo.toml: [unsafe-only-in-sandbox] [workspace.lints.rust] must set unsafe_code = "forbid"
        "#]],
    );
    let table_root = ROOT.replace(
        r#"unsafe_code = "forbid""#,
        r#"unsafe_code = { level = "forbid", priority = -1 }"#,
    );
    check_example(
        xtask::check_unsafe_only_in_sandbox,
        vec![file("Cargo.toml", &table_root)],
        expect![""],
    );
}

#[test]
fn crate_docs() {
    check_real_tree(Rule::CrateDocs, xtask::check_crate_docs);
}

#[test]
fn crate_docs_examples() {
    check_example(
        xtask::check_crate_docs,
        vec![
            member("carapace-a", ""),
            file(
                "crates/carapace-a/src/lib.rs",
                "\n\n//! What a is for.\nfn a() {}\n",
            ),
            member("carapace-b", ""),
            file(
                "crates/carapace-b/src/lib.rs",
                "/// An item doc is not a crate doc.\nfn b() {}\n",
            ),
            file("crates/carapace-b/src/main.rs", "fn main() {}\n"),
            member("carapace-c", ""),
            file("crates/carapace-c/src/bin/c.rs", "//! Not a crate root.\n"),
            file("xtask/Cargo.toml", "[package]\nname = \"xtask\"\n"),
            file("xtask/src/main.rs", "// A plain comment.\n//! Too late.\n"),
        ],
        expect![[r#"
            crates/carapace-b/src/lib.rs: [crate-docs] crate root must start with a `//!` doc comment saying what the crate is for and what it must never do
            crates/carapace-b/src/main.rs: [crate-docs] crate root must start with a `//!` doc comment saying what the crate is for and what it must never do
            crates/carapace-c/Cargo.toml: [crate-docs] crates/carapace-c has neither src/lib.rs nor src/main.rs
            xtask/src/main.rs: [crate-docs] crate root must start with a `//!` doc comment saying what the crate is for and what it must never do
        "#]],
    );
}

#[test]
fn no_todo() {
    check_real_tree(Rule::NoTodo, xtask::check_no_todo);
}

#[test]
fn no_todo_examples() {
    let lib = r#"//! A crate.
fn a() { todo!() }
// todo!() in a comment
const S: &str = "dbg!(x)";
fn b(todo: u8) -> bool { todo != 2 }
fn c() { std::unimplemented!["not yet"] }

#[cfg(test)]
mod tests {
    fn t() { dbg!(1); todo!() }
}
"#;
    check_example(
        xtask::check_no_todo,
        vec![
            file("crates/carapace-a/src/lib.rs", lib),
            file("crates/carapace-a/src/sub/mod.rs", "fn d() { dbg! { 1 }; }"),
            file("crates/carapace-a/src/tests.rs", "fn t() { dbg!(1); }"),
            file("crates/carapace-a/src/sub/tests.rs", "fn t() { todo!(); }"),
            file("crates/carapace-a/tests/it.rs", "fn t() { todo!(); }"),
            file("crates/carapace-a/benches/b.rs", "fn t() { todo!(); }"),
            file("xtask/src/lib.rs", "fn e() { unimplemented!() }"),
        ],
        expect![[r#"
            crates/carapace-a/src/lib.rs: [no-todo] `todo!` at line 2 outside tests
            crates/carapace-a/src/lib.rs: [no-todo] `unimplemented!` at line 6 outside tests
            crates/carapace-a/src/sub/mod.rs: [no-todo] `dbg!` at line 1 outside tests
            xtask/src/lib.rs: [no-todo] `unimplemented!` at line 1 outside tests
        "#]],
    );
}

#[test]
fn member_manifests() {
    check_real_tree(Rule::MemberManifests, xtask::check_member_manifests);
}

#[test]
fn member_manifests_examples() {
    check_example(
        xtask::check_member_manifests,
        vec![
            member("carapace-good", ""),
            file(
                "crates/carapace-b/Cargo.toml",
                "[package]\nname = \"carapace-bee\"\nversion = \"0.1.0\"\n\n[lints.rust]\n",
            ),
            file("crates/carapace-c/src/lib.rs", "//! Half-created crate.\n"),
            file("crates/carapace-d/Cargo.toml", "[workspace]\n"),
            file("crates/carapace-e/Cargo.toml", "[package\n"),
            file(
                "xtask/Cargo.toml",
                "[package]\nname = \"xtask\"\nversion.workspace = true\npublish = true\n\n\
                 [lints]\nworkspace = true\n",
            ),
        ],
        expect![[r#"
            crates/carapace-e/Cargo.toml: [member-manifests] manifest does not parse: unclosed table, expected `]`
            crates/carapace-c/Cargo.toml: [member-manifests] crates/carapace-c has no Cargo.toml, so the `crates/*` glob does not load
            crates/carapace-b/Cargo.toml: [member-manifests] package carapace-bee lives in folder crates/carapace-b; the folder must be named like the package
            crates/carapace-b/Cargo.toml: [member-manifests] package version must be "0.0.0"
            crates/carapace-b/Cargo.toml: [member-manifests] package must set publish = false
            crates/carapace-b/Cargo.toml: [member-manifests] manifest must set [lints] workspace = true
            crates/carapace-d/Cargo.toml: [member-manifests] manifest has no [package]
            xtask/Cargo.toml: [member-manifests] package version must be "0.0.0"
            xtask/Cargo.toml: [member-manifests] package must set publish = false
        "#]],
    );
}

/// The sandbox cannot inherit `unsafe_code = "forbid"`, so it may restate the workspace
/// lints with `unsafe_code = "deny"` instead; any other difference is a violation.
#[test]
fn member_manifests_sandbox_lints() {
    let sandbox = |lints: &str| {
        vec![
            file("Cargo.toml", ROOT),
            file(
                "crates/carapace-sandbox/Cargo.toml",
                &format!(
                    "[package]\nname = \"carapace-sandbox\"\nversion = \"0.0.0\"\n\
                     publish = false\n\n{lints}"
                ),
            ),
        ]
    };
    let restated = "[lints.rust]\nunsafe_code = \"deny\"\nmissing_docs = \"warn\"\n\
                    [lints.clippy]\ntodo = \"warn\"\n";
    check_example(
        xtask::check_member_manifests,
        sandbox(restated),
        expect![""],
    );
    let allowed = restated.replace("\"deny\"", "\"allow\"");
    check_example(
        xtask::check_member_manifests,
        sandbox(&allowed),
        expect![[r#"
            crates/carapace-sandbox/Cargo.toml: [member-manifests] manifest must set [lints] workspace = true, or restate the workspace lints with only rust.unsafe_code changed to "deny"
        "#]],
    );
    let dropped = restated.replace("[lints.clippy]\ntodo = \"warn\"\n", "");
    check_example(
        xtask::check_member_manifests,
        sandbox(&dropped),
        expect![[r#"
            crates/carapace-sandbox/Cargo.toml: [member-manifests] manifest must set [lints] workspace = true, or restate the workspace lints with only rust.unsafe_code changed to "deny"
        "#]],
    );
}

#[test]
fn root_manifest() {
    check_real_tree(Rule::RootManifest, xtask::check_root_manifest);
}

#[test]
fn root_manifest_examples() {
    check_example(
        xtask::check_root_manifest,
        vec![file("Cargo.toml", ROOT)],
        expect![""],
    );
    check_example(
        xtask::check_root_manifest,
        vec![file(
            "Cargo.toml",
            "[package]\nname = \"carapace\"\n\n[workspace]\nmembers = [\"crates/*\"]\n",
        )],
        expect![[r#"
            Cargo.toml: [root-manifest] root manifest has a [package]; it must be a virtual manifest
            Cargo.toml: [root-manifest] [workspace] must set members = ["crates/*", "xtask"]
        "#]],
    );
    check_example(
        xtask::check_root_manifest,
        vec![file("crates/carapace-a/Cargo.toml", "")],
        expect![[r#"
            Cargo.toml: [root-manifest] there is no root manifest
        "#]],
    );
}
