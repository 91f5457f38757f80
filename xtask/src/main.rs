//! Repository chores. The tidy checks live in `tests/tidy.rs` and run with `cargo test`.

fn main() {
    eprintln!("usage: cargo test -p xtask   (runs the tidy checks)");
    std::process::exit(2);
}
