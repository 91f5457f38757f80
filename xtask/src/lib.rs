//! Tidy checks for the Carapace workspace: dependency directions, `unsafe` only in the
//! sandbox, crate docs, no `todo!()` outside tests, and the shape of the manifests.
//!
//! The checks read files directly (never `cargo metadata`), so they run even while the
//! workspace does not compile. Each check is a pure function of a [`Tree`], so tests can
//! feed it small in-memory trees that break the rule. This crate must never write to the
//! tree it checks.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::Path;

use toml::{Table, Value};

/// Crates that carry out decisions; they take resolved input or a trait, never policy.
pub const MECHANISM_CRATES: &[&str] = &[
    "carapace-types",
    "carapace-store",
    "carapace-fs",
    "carapace-llm",
    "carapace-sandbox",
    "carapace-egress",
    "carapace-channels",
    "carapace-mcp",
    "carapace-vault",
    "carapace-testkit",
];

/// Crates that act on the world; only the gate may depend on them outside tests.
pub const EXECUTOR_CRATES: &[&str] = &[
    "carapace-fs",
    "carapace-sandbox",
    "carapace-egress",
    "carapace-channels",
    "carapace-mcp",
];

/// What the pure policy crate may depend on outside dev-dependencies.
const POLICY_DEPS: &[&str] = &["carapace-types", "serde", "serde_json"];

/// Crates that do IO and so have no place in the vocabulary crate.
pub const IO_CRATES: &[&str] = &["tokio", "axum", "reqwest", "rusqlite", "hyper"];

/// The only folder where `unsafe` may appear.
pub const SANDBOX_DIR: &str = "crates/carapace-sandbox/";

/// A file of the tree: its path relative to the workspace root, with `/` separators.
#[derive(Clone, Debug)]
pub struct File {
    /// Path relative to the workspace root, e.g. `crates/carapace-fs/src/lib.rs`.
    pub path: String,
    /// The file's contents.
    pub text: String,
}

/// The part of the workspace the checks look at.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// `Cargo.toml` at the root, if there is one.
    pub root_manifest: Option<File>,
    /// Folders directly under `crates/`, e.g. `crates/carapace-fs`.
    pub crate_dirs: Vec<String>,
    /// Member manifests: `crates/*/Cargo.toml` and `xtask/Cargo.toml`.
    pub manifests: Vec<File>,
    /// Every `.rs` file under `crates/` and `xtask/`.
    pub sources: Vec<File>,
}

impl Tree {
    /// Builds a tree from `(path, text)` pairs; paths are relative to the workspace root.
    pub fn from_files<P: Into<String>, T: Into<String>>(
        files: impl IntoIterator<Item = (P, T)>,
    ) -> Tree {
        let mut tree = Tree::default();
        let mut crate_dirs = BTreeSet::new();
        for (path, text) in files {
            let file = File {
                path: path.into(),
                text: text.into(),
            };
            if let Some(rest) = file.path.strip_prefix("crates/")
                && let Some((dir, _)) = rest.split_once('/')
            {
                crate_dirs.insert(format!("crates/{dir}"));
            }
            tree.add(file);
        }
        tree.crate_dirs = crate_dirs.into_iter().collect();
        tree
    }

    /// Reads the workspace at `root`, skipping `target` and hidden folders.
    pub fn load(root: &Path) -> io::Result<Tree> {
        let mut tree = Tree::default();
        if let Some(text) = read_if_present(&root.join("Cargo.toml"))? {
            tree.root_manifest = Some(File {
                path: "Cargo.toml".to_owned(),
                text,
            });
        }
        let mut files = Vec::new();
        if root.join("crates").is_dir() {
            for entry in sorted_entries(&root.join("crates"))? {
                if entry.is_dir && !skipped_dir(&entry.name) {
                    tree.crate_dirs.push(format!("crates/{}", entry.name));
                }
            }
            walk(root, "crates", &mut files)?;
        }
        if root.join("xtask").is_dir() {
            walk(root, "xtask", &mut files)?;
        }
        for file in files {
            tree.add(file);
        }
        Ok(tree)
    }

    fn add(&mut self, file: File) {
        let parts: Vec<&str> = file.path.split('/').collect();
        let is_member_manifest = matches!(parts.as_slice(), ["crates", _, "Cargo.toml"])
            || parts.as_slice() == ["xtask", "Cargo.toml"];
        if parts.as_slice() == ["Cargo.toml"] {
            self.root_manifest = Some(file);
        } else if is_member_manifest {
            self.manifests.push(file);
        } else if file.path.ends_with(".rs") {
            self.sources.push(file);
        }
    }

    fn source(&self, path: &str) -> Option<&File> {
        self.sources.iter().find(|f| f.path == path)
    }

    fn workspace_dependencies(&self) -> Option<Table> {
        let root: Table = self.root_manifest.as_ref()?.text.parse().ok()?;
        match root.get("workspace")?.get("dependencies")? {
            Value::Table(deps) => Some(deps.clone()),
            _ => None,
        }
    }
}

struct Entry {
    name: String,
    is_dir: bool,
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        entries.push(Entry {
            name,
            is_dir: entry.file_type()?.is_dir(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn skipped_dir(name: &str) -> bool {
    name == "target" || name.starts_with('.')
}

/// Collects `Cargo.toml` and `.rs` files under `root/rel`.
fn walk(root: &Path, rel: &str, out: &mut Vec<File>) -> io::Result<()> {
    let entries = match sorted_entries(&root.join(rel)) {
        // Other engineers edit the tree while the checks run; a folder may vanish.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let path = format!("{rel}/{}", entry.name);
        if entry.is_dir {
            if !skipped_dir(&entry.name) {
                walk(root, &path, out)?;
            }
        } else if (entry.name == "Cargo.toml" || entry.name.ends_with(".rs"))
            && let Some(text) = read_if_present(&root.join(&path))?
        {
            out.push(File { path, text });
        }
    }
    Ok(())
}

fn read_if_present(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// A tidy rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Mechanism crates never depend on policy; types and policy stay pure.
    DependencyDirections,
    /// Executor crates are dependencies of the gate only; testkit is dev-only.
    ExecutorsOnlyFromGate,
    /// `unsafe` only in the sandbox crate, each block with a `// SAFETY:` comment.
    UnsafeOnlyInSandbox,
    /// Every crate root starts with a `//!` doc comment.
    CrateDocs,
    /// No `todo!`, `unimplemented!` or `dbg!` outside tests.
    NoTodo,
    /// Member manifests: version 0.0.0, unpublished, workspace lints, folder = name.
    MemberManifests,
    /// The root manifest is virtual with `members = ["crates/*", "xtask"]`.
    RootManifest,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::DependencyDirections => "dependency-directions",
            Rule::ExecutorsOnlyFromGate => "executors-only-from-gate",
            Rule::UnsafeOnlyInSandbox => "unsafe-only-in-sandbox",
            Rule::CrateDocs => "crate-docs",
            Rule::NoTodo => "no-todo",
            Rule::MemberManifests => "member-manifests",
            Rule::RootManifest => "root-manifest",
        })
    }
}

/// One broken rule in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Path of the offending file, relative to the workspace root.
    pub file: String,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, lowercase, without a final period.
    pub message: String,
}

impl Violation {
    fn new(file: &str, rule: Rule, message: impl Into<String>) -> Violation {
        Violation {
            file: file.to_owned(),
            rule,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: [{}] {}", self.file, self.rule, self.message)
    }
}

/// Runs every check.
pub fn check_all(tree: &Tree) -> Vec<Violation> {
    [
        check_dependency_directions,
        check_executors_only_from_gate,
        check_unsafe_only_in_sandbox,
        check_crate_docs,
        check_no_todo,
        check_member_manifests,
        check_root_manifest,
    ]
    .iter()
    .flat_map(|check| check(tree))
    .collect()
}

// ---------------------------------------------------------------------------------------
// Manifests

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DepKind {
    Normal,
    Dev,
    Build,
}

struct Dep {
    /// The package depended on, after `package = "..."` renames.
    package: String,
    kind: DepKind,
    /// The table it is listed in, e.g. `[dev-dependencies]`.
    table: String,
}

struct Manifest<'a> {
    file: &'a File,
    table: Table,
}

impl Manifest<'_> {
    /// The folder holding the manifest, e.g. `crates/carapace-fs`.
    fn dir(&self) -> &str {
        self.file
            .path
            .strip_suffix("/Cargo.toml")
            .unwrap_or(&self.file.path)
    }

    fn folder_name(&self) -> &str {
        self.dir().rsplit('/').next().unwrap_or_default()
    }

    fn package_name(&self) -> Option<&str> {
        self.table.get("package")?.get("name")?.as_str()
    }

    /// The package name, or the folder name when the manifest has none.
    fn name(&self) -> &str {
        self.package_name().unwrap_or_else(|| self.folder_name())
    }

    fn dependencies(&self, workspace_deps: Option<&Table>) -> Vec<Dep> {
        let mut deps = Vec::new();
        collect_deps(&self.table, "", workspace_deps, &mut deps);
        if let Some(Value::Table(targets)) = self.table.get("target") {
            for (cfg, target) in targets {
                if let Value::Table(target) = target {
                    collect_deps(
                        target,
                        &format!("target.'{cfg}'."),
                        workspace_deps,
                        &mut deps,
                    );
                }
            }
        }
        deps
    }
}

fn collect_deps(table: &Table, prefix: &str, workspace_deps: Option<&Table>, out: &mut Vec<Dep>) {
    const TABLES: &[(&str, DepKind)] = &[
        ("dependencies", DepKind::Normal),
        ("dev-dependencies", DepKind::Dev),
        ("dev_dependencies", DepKind::Dev),
        ("build-dependencies", DepKind::Build),
        ("build_dependencies", DepKind::Build),
    ];
    for &(key, kind) in TABLES {
        let Some(Value::Table(deps)) = table.get(key) else {
            continue;
        };
        for (name, spec) in deps {
            let inherited = spec.get("workspace").and_then(Value::as_bool) == Some(true);
            let renamed = if inherited {
                workspace_deps
                    .and_then(|ws| ws.get(name))
                    .and_then(|d| d.get("package"))
            } else {
                spec.get("package")
            };
            let package = renamed.and_then(Value::as_str).unwrap_or(name).to_owned();
            out.push(Dep {
                package,
                kind,
                table: format!("[{prefix}{key}]"),
            });
        }
    }
}

/// Parses every member manifest; a manifest that does not parse is a violation of `rule`.
fn parse_manifests(tree: &Tree, rule: Rule) -> (Vec<Manifest<'_>>, Vec<Violation>) {
    let mut manifests = Vec::new();
    let mut violations = Vec::new();
    for file in &tree.manifests {
        match file.text.parse::<Table>() {
            Ok(table) => manifests.push(Manifest { file, table }),
            Err(e) => violations.push(Violation::new(
                &file.path,
                rule,
                format!("manifest does not parse: {}", e.message()),
            )),
        }
    }
    (manifests, violations)
}

/// Rule: mechanism crates never depend on `carapace-policy` (dev-dependencies included);
/// `carapace-types` depends on no other workspace crate (in any table) and on no IO crate
/// (outside dev-dependencies); `carapace-policy` depends on nothing but `carapace-types`
/// (outside dev-dependencies).
pub fn check_dependency_directions(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::DependencyDirections;
    let (manifests, mut violations) = parse_manifests(tree, rule);
    let workspace_deps = tree.workspace_dependencies();
    let members: BTreeSet<&str> = manifests.iter().map(Manifest::name).collect();
    let is_workspace_crate =
        |name: &str| members.contains(name) || name == "cara" || name.starts_with("carapace-");
    for manifest in &manifests {
        let name = manifest.name();
        let path = &manifest.file.path;
        for dep in manifest.dependencies(workspace_deps.as_ref()) {
            let (package, table) = (dep.package.as_str(), &dep.table);
            if MECHANISM_CRATES.contains(&name) && package == "carapace-policy" {
                violations.push(Violation::new(
                    path,
                    rule,
                    format!(
                        "mechanism crate {name} depends on carapace-policy in {table}; \
                         it must take resolved input or a trait instead"
                    ),
                ));
            }
            if name == "carapace-types" {
                if is_workspace_crate(package) && package != name {
                    violations.push(Violation::new(
                        path,
                        rule,
                        format!(
                            "carapace-types depends on {package} in {table}; \
                             the vocabulary depends on no other carapace crate"
                        ),
                    ));
                }
                if IO_CRATES.contains(&package) && dep.kind != DepKind::Dev {
                    violations.push(Violation::new(
                        path,
                        rule,
                        format!(
                            "carapace-types depends on {package} in {table}; \
                             the vocabulary does no IO"
                        ),
                    ));
                }
            }
            // The rule language is read with serde; argument values are JSON. Neither
            // does IO, so the crate stays a pure function of its input.
            if name == "carapace-policy"
                && dep.kind != DepKind::Dev
                && !POLICY_DEPS.contains(&package)
            {
                violations.push(Violation::new(
                    path,
                    rule,
                    format!(
                        "carapace-policy depends on {package} in {table}; \
                         policy is pure and depends only on carapace-types, serde and serde_json"
                    ),
                ));
            }
        }
    }
    violations
}

/// Rule: executor crates are normal dependencies of `carapace-gate` only (and, of the
/// `cara` binary, the sandbox for its init entry point and `cara sandbox`, the channels
/// to build their backends from config and the MCP hub; of the MCP client, the sandbox
/// and egress it reaches servers through), and any crate's dev-dependencies;
/// `carapace-testkit` is only ever a dev-dependency.
pub fn check_executors_only_from_gate(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::ExecutorsOnlyFromGate;
    let (manifests, mut violations) = parse_manifests(tree, rule);
    let workspace_deps = tree.workspace_dependencies();
    for manifest in &manifests {
        let name = manifest.name();
        for dep in manifest.dependencies(workspace_deps.as_ref()) {
            let (package, table) = (dep.package.as_str(), &dep.table);
            let allowed = match dep.kind {
                DepKind::Dev => true,
                // The binary holds the sandbox's init entry point (it must run before any
                // thread starts) and the owner's own `cara sandbox` commands.
                // It also builds the channel backends from config.toml and hands them to
                // the Gate, which alone calls them.
                // It also starts the MCP servers of config.toml (the hub) and hands the hub
                // to the Gate, which alone calls their tools; the MCP client runs stdio
                // servers in the sandbox and reaches HTTP servers through egress.
                DepKind::Normal => {
                    name == "carapace-gate"
                        || (name == "cara"
                            && matches!(
                                package,
                                "carapace-sandbox" | "carapace-channels" | "carapace-mcp"
                            ))
                        || (name == "carapace-mcp"
                            && matches!(package, "carapace-sandbox" | "carapace-egress"))
                }
                DepKind::Build => false,
            };
            if EXECUTOR_CRATES.contains(&package) && !allowed {
                violations.push(Violation::new(
                    &manifest.file.path,
                    rule,
                    format!(
                        "{name} depends on executor crate {package} in {table}; \
                         only carapace-gate may, other crates only in [dev-dependencies]"
                    ),
                ));
            }
            if package == "carapace-testkit" && dep.kind != DepKind::Dev {
                violations.push(Violation::new(
                    &manifest.file.path,
                    rule,
                    format!(
                        "{name} depends on carapace-testkit in {table}; \
                         it belongs in [dev-dependencies] only"
                    ),
                ));
            }
        }
    }
    violations
}

/// Rule: member manifests have `version = "0.0.0"`, `publish = false` and
/// `[lints] workspace = true`, and live in a folder named like the package. Every folder
/// under `crates/` has a manifest. The sandbox crate, which cannot inherit the workspace's
/// `unsafe_code = "forbid"`, may instead restate the workspace lints with
/// `unsafe_code = "deny"`.
pub fn check_member_manifests(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::MemberManifests;
    let (manifests, mut violations) = parse_manifests(tree, rule);
    for dir in &tree.crate_dirs {
        let path = format!("{dir}/Cargo.toml");
        if !tree.manifests.iter().any(|m| m.path == path) {
            violations.push(Violation::new(
                &path,
                rule,
                format!("{dir} has no Cargo.toml, so the `crates/*` glob does not load"),
            ));
        }
    }
    let workspace_lints = tree
        .root_manifest
        .as_ref()
        .and_then(|root| root.text.parse::<Table>().ok())
        .and_then(|root| root.get("workspace")?.get("lints").cloned());
    for manifest in &manifests {
        let path = &manifest.file.path;
        let Some(package) = manifest.table.get("package") else {
            violations.push(Violation::new(path, rule, "manifest has no [package]"));
            continue;
        };
        match manifest.package_name() {
            Some(name) if name == manifest.folder_name() => {}
            Some(name) => violations.push(Violation::new(
                path,
                rule,
                format!(
                    "package {name} lives in folder {}; the folder must be named like the package",
                    manifest.dir()
                ),
            )),
            None => violations.push(Violation::new(path, rule, "package has no name")),
        }
        if package.get("version").and_then(Value::as_str) != Some("0.0.0") {
            violations.push(Violation::new(
                path,
                rule,
                "package version must be \"0.0.0\"",
            ));
        }
        if package.get("publish").and_then(Value::as_bool) != Some(false) {
            violations.push(Violation::new(
                path,
                rule,
                "package must set publish = false",
            ));
        }
        let lints = manifest.table.get("lints");
        let inherits = lints
            .and_then(|l| l.get("workspace"))
            .and_then(Value::as_bool)
            == Some(true);
        let sandbox_ok = manifest.name() == "carapace-sandbox"
            && lints.is_some_and(|l| restates_lints_with_unsafe_deny(l, workspace_lints.as_ref()));
        if manifest.name() == "carapace-sandbox" && !inherits && !sandbox_ok {
            violations.push(Violation::new(
                path,
                rule,
                "manifest must set [lints] workspace = true, or restate the workspace lints \
                 with only rust.unsafe_code changed to \"deny\"",
            ));
        } else if !inherits && !sandbox_ok {
            violations.push(Violation::new(
                path,
                rule,
                "manifest must set [lints] workspace = true",
            ));
        }
    }
    violations
}

/// Whether `lints` equals the workspace lints except for `rust.unsafe_code = "deny"`.
fn restates_lints_with_unsafe_deny(lints: &Value, workspace_lints: Option<&Value>) -> bool {
    let Some(Value::Table(workspace)) = workspace_lints else {
        return false;
    };
    let mut expected = workspace.clone();
    let rust = expected
        .entry("rust")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(rust) = rust {
        rust.insert("unsafe_code".to_owned(), Value::String("deny".to_owned()));
    }
    lints.as_table() == Some(&expected)
}

/// Rule: the root manifest is virtual (no `[package]`) with
/// `members = ["crates/*", "xtask"]`.
pub fn check_root_manifest(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::RootManifest;
    let Some(file) = &tree.root_manifest else {
        return vec![Violation::new(
            "Cargo.toml",
            rule,
            "there is no root manifest",
        )];
    };
    let root = match file.text.parse::<Table>() {
        Ok(root) => root,
        Err(e) => {
            let message = format!("manifest does not parse: {}", e.message());
            return vec![Violation::new(&file.path, rule, message)];
        }
    };
    let mut violations = Vec::new();
    if root.contains_key("package") {
        violations.push(Violation::new(
            &file.path,
            rule,
            "root manifest has a [package]; it must be a virtual manifest",
        ));
    }
    let members: Option<Vec<&str>> = root
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(Value::as_array)
        .and_then(|members| members.iter().map(Value::as_str).collect());
    if members.as_deref() != Some(&["crates/*", "xtask"]) {
        violations.push(Violation::new(
            &file.path,
            rule,
            "[workspace] must set members = [\"crates/*\", \"xtask\"]",
        ));
    }
    violations
}

// ---------------------------------------------------------------------------------------
// Sources

/// Rule: no `unsafe` outside `crates/carapace-sandbox/`, the root manifest forbids
/// `unsafe_code`, and every `unsafe` block in the sandbox has a `// SAFETY:` comment in
/// the three lines above it.
pub fn check_unsafe_only_in_sandbox(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::UnsafeOnlyInSandbox;
    let mut violations = Vec::new();
    match &tree.root_manifest {
        None => violations.push(Violation::new(
            "Cargo.toml",
            rule,
            "there is no root manifest",
        )),
        Some(root) => {
            let level = root.text.parse::<Table>().ok().and_then(|t| {
                let lint = t
                    .get("workspace")?
                    .get("lints")?
                    .get("rust")?
                    .get("unsafe_code")?;
                let level = lint.get("level").unwrap_or(lint);
                level.as_str().map(str::to_owned)
            });
            if level.as_deref() != Some("forbid") {
                violations.push(Violation::new(
                    &root.path,
                    rule,
                    "[workspace.lints.rust] must set unsafe_code = \"forbid\"",
                ));
            }
        }
    }
    for file in &tree.sources {
        let tokens = lex(&file.text);
        let in_sandbox = file.path.starts_with(SANDBOX_DIR);
        for (i, token) in tokens.iter().enumerate() {
            if token.tok != Tok::Ident("unsafe") {
                continue;
            }
            let line = token.line;
            if !in_sandbox {
                violations.push(Violation::new(
                    &file.path,
                    rule,
                    format!(
                        "`unsafe` at line {line}; unsafe code is allowed only in {SANDBOX_DIR}"
                    ),
                ));
                continue;
            }
            let is_block = tokens[i + 1..]
                .iter()
                .find(|t| !matches!(t.tok, Tok::LineComment(_)))
                .is_some_and(|t| t.tok == Tok::Punct('{'));
            let has_safety = tokens.iter().any(|t| {
                matches!(t.tok, Tok::LineComment(c) if c.trim_start().starts_with("SAFETY:"))
                    && t.line < line
                    && t.line + 3 >= line
            });
            if is_block && !has_safety {
                violations.push(Violation::new(
                    &file.path,
                    rule,
                    format!(
                        "`unsafe` block at line {line} has no `// SAFETY:` comment \
                         in the 3 lines above"
                    ),
                ));
            }
        }
    }
    violations
}

/// Rule: every crate's `src/lib.rs` and `src/main.rs` starts with a `//!` doc comment.
pub fn check_crate_docs(tree: &Tree) -> Vec<Violation> {
    let rule = Rule::CrateDocs;
    let mut violations = Vec::new();
    for manifest in &tree.manifests {
        let dir = manifest
            .path
            .strip_suffix("/Cargo.toml")
            .unwrap_or(&manifest.path);
        let roots: Vec<&File> = ["lib.rs", "main.rs"]
            .iter()
            .filter_map(|name| tree.source(&format!("{dir}/src/{name}")))
            .collect();
        if roots.is_empty() {
            violations.push(Violation::new(
                &manifest.path,
                rule,
                format!("{dir} has neither src/lib.rs nor src/main.rs"),
            ));
        }
        for root in roots {
            let first = root
                .text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            if !first.trim_start().starts_with("//!") {
                violations.push(Violation::new(
                    &root.path,
                    rule,
                    "crate root must start with a `//!` doc comment saying what the crate \
                     is for and what it must never do",
                ));
            }
        }
    }
    violations
}

/// Rule: no `todo!`, `unimplemented!` or `dbg!` in `src/` outside tests. Files named
/// `tests.rs` are tests, and so is everything after the first `#[cfg(test)]` line.
pub fn check_no_todo(tree: &Tree) -> Vec<Violation> {
    const MACROS: &[&str] = &["todo", "unimplemented", "dbg"];
    let rule = Rule::NoTodo;
    let mut violations = Vec::new();
    for file in tree.sources.iter().filter(|f| is_non_test_source(&f.path)) {
        let test_start = file
            .text
            .lines()
            .position(|l| l.trim_start().starts_with("#[cfg(test)]"))
            .map_or(usize::MAX, |i| i + 1);
        let tokens = lex(&file.text);
        for window in tokens.windows(3) {
            let [name, bang, open] = window else { continue };
            if let Tok::Ident(macro_name) = name.tok
                && MACROS.contains(&macro_name)
                && bang.tok == Tok::Punct('!')
                && matches!(open.tok, Tok::Punct('(' | '[' | '{'))
                && name.line < test_start
            {
                violations.push(Violation::new(
                    &file.path,
                    rule,
                    format!("`{macro_name}!` at line {} outside tests", name.line),
                ));
            }
        }
    }
    violations
}

/// Whether `path` is under a member's `src/` and not a `tests.rs` module.
fn is_non_test_source(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let in_src = matches!(
        parts.as_slice(),
        ["crates", _, "src", ..] | ["xtask", "src", ..]
    );
    in_src && parts.last() != Some(&"tests.rs")
}

// ---------------------------------------------------------------------------------------
// A small Rust tokenizer: enough to tell code from comments, strings and char literals.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    /// An identifier or keyword (raw identifiers are `Other`).
    Ident(&'a str),
    /// One ASCII punctuation character.
    Punct(char),
    /// The text of a `//` comment after the slashes, doc comments included.
    LineComment(&'a str),
    /// A literal, lifetime, raw identifier or anything else the checks ignore.
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    /// 1-based line of the token's first character.
    line: usize,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn lex(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let start_line = line;
        let b = bytes[i];
        let tok = if b == b'\n' {
            line += 1;
            i += 1;
            continue;
        } else if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if b == b'/' && at(i + 1) == b'/' {
            let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            i = end;
            Tok::LineComment(&text[start + 2..end])
        } else if b == b'/' && at(i + 1) == b'*' {
            let mut depth = 0usize;
            while i < bytes.len() {
                if bytes[i] == b'/' && at(i + 1) == b'*' {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == b'*' && at(i + 1) == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Tok::Other
        } else if b == b'"' {
            i = skip_quoted(bytes, i + 1, b'"');
            Tok::Other
        } else if b == b'\'' {
            i = skip_char_or_lifetime(bytes, i);
            Tok::Other
        } else if b.is_ascii_digit() {
            while i < bytes.len() && is_ident_byte(bytes[i]) {
                i += 1;
            }
            Tok::Other
        } else if is_ident_byte(b) {
            while i < bytes.len() && is_ident_byte(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            match (word, at(i)) {
                ("r" | "br" | "cr", b'"' | b'#') => {
                    let hashes = bytes[i..].iter().take_while(|&&c| c == b'#').count();
                    if at(i + hashes) == b'"' {
                        i = skip_raw_string(bytes, i + hashes + 1, hashes);
                    } else {
                        // A raw identifier such as `r#type`.
                        i += hashes;
                        while i < bytes.len() && is_ident_byte(bytes[i]) {
                            i += 1;
                        }
                    }
                    Tok::Other
                }
                ("b" | "c", b'"') => {
                    i = skip_quoted(bytes, i + 1, b'"');
                    Tok::Other
                }
                ("b", b'\'') => {
                    i = skip_quoted(bytes, i + 1, b'\'');
                    Tok::Other
                }
                _ => Tok::Ident(word),
            }
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            if b.is_ascii() {
                Tok::Punct(char::from(b))
            } else {
                Tok::Other
            }
        };
        line += text[start..i].matches('\n').count();
        tokens.push(Token {
            tok,
            line: start_line,
        });
    }
    tokens
}

/// Skips to just past the closing `close`, honouring backslash escapes.
fn skip_quoted(bytes: &[u8], mut i: usize, close: u8) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Skips to just past `"` followed by `hashes` `#` characters.
fn skip_raw_string(bytes: &[u8], mut i: usize, hashes: usize) -> usize {
    while i < bytes.len() {
        if bytes[i] == b'"'
            && bytes[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == b'#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    bytes.len()
}

/// At a `'`: skips a char literal, or only the quote of a lifetime or label.
fn skip_char_or_lifetime(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i + 1) {
        Some(b'\\') => skip_quoted(bytes, i + 1, b'\''),
        Some(&lead) => {
            let width = match lead {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            if bytes.get(i + 1 + width) == Some(&b'\'') {
                i + 2 + width
            } else {
                i + 1
            }
        }
        None => i + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(text: &str) -> Vec<(usize, &str)> {
        lex(text)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(word) => Some((t.line, word)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lexer_skips_comments_strings_and_chars() {
        let text = concat!(
            "a // unsafe\n",
            "/* unsafe /* nested */ unsafe */ b\n",
            "\"unsafe \\\" unsafe\" c\n",
            "r#\"unsafe \" unsafe\"# d\n",
            "b\"unsafe\" br\"unsafe\" c\"unsafe\" e\n",
            "'\"' f '\\'' g 'é' h\n",
            "fn x<'a>(y: &'a str) { 'outer: loop {} } r#unsafe unsafe_code unsafe\n",
        );
        assert_eq!(
            idents(text),
            [
                (1, "a"),
                (2, "b"),
                (3, "c"),
                (4, "d"),
                (5, "e"),
                (6, "f"),
                (6, "g"),
                (6, "h"),
                (7, "fn"),
                (7, "x"),
                (7, "a"),
                (7, "y"),
                (7, "a"),
                (7, "str"),
                (7, "outer"),
                (7, "loop"),
                (7, "unsafe_code"),
                (7, "unsafe"),
            ]
        );
    }
}
