//! The scrubber runs on every argument document, result and audit record: measure it on
//! a typical audit record and on a 64 KiB file read.

use carapace_gate::Scrubber;
use carapace_types::Secret;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn scrub(c: &mut Criterion) {
    let s = Scrubber::new(&[
        Secret::new("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string()),
        Secret::new("sk-bench-0123456789abcdef".to_string()),
    ]);
    let record = json!({
        "event": "tool_call", "outcome": "executed", "principal": "owner@api",
        "session": "s_0123456789abcdef", "call_id": "call_1", "tool": "read_file",
        "effect": "read", "rule": "default.read-allowed", "args": { "path": "notes/today.md" },
        "args_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "result_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "result_label": "trusted/private", "result_source": "user_file", "ts_ms": 1_795_000_000_000i64,
    });
    c.bench_function("scrub/audit_record", |b| {
        b.iter(|| {
            let mut r = record.clone();
            s.scrub_json(&mut r)
        })
    });
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(1500);
    let file = json!({ "path": "a.txt", "content": text });
    c.bench_function("scrub/64k_file_result", |b| {
        b.iter(|| {
            let mut r = file.clone();
            s.scrub_json(&mut r)
        })
    });
}

criterion_group!(benches, scrub);
criterion_main!(benches);
