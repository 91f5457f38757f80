//! Runs the tidy checks on this workspace and prints every violation; exits 1 if there
//! are any. `cargo test -p xtask` runs the same checks as tests. It never edits the tree.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
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
