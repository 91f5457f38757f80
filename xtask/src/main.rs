//! Runs the tidy checks on this workspace (`cargo run -p xtask [-- ROOT]`) and prints
//! every violation; exits 1 if there are any. `cargo test -p xtask` runs the same checks
//! as tests. It never edits the tree.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    // `cargo run -p xtask -- PATH` checks another checkout; the default is this one.
    let default_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let arg = std::env::args_os().nth(1).map(PathBuf::from);
    let root = arg.as_deref().unwrap_or(default_root);
    let tree = match xtask::Tree::load(root) {
        Ok(tree) => tree,
        Err(e) => {
            eprintln!(
                "error: cannot read the workspace at {}: {e}",
                root.display()
            );
            return ExitCode::from(2);
        }
    };
    let violations = xtask::check_all(&tree);
    for violation in &violations {
        println!("{violation}");
    }
    if violations.is_empty() {
        println!("tidy: ok");
        ExitCode::SUCCESS
    } else {
        eprintln!("tidy: {} violation(s)", violations.len());
        ExitCode::FAILURE
    }
}
