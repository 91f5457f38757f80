//! The audit append is on the hot path of every tool call; the target is well under 50 µs.
//! Its CPU time is the canonical JSON, the chain hash, the HMAC over the new head and
//! SQLite's statements; on a file, SQLite's locking and WAL writes add to it.

use carapace_store::{AuditKey, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

fn record(n: u64) -> Value {
    json!({
        "principal": "owner@api",
        "session": "s-4f1c",
        "tool": "read_file",
        "effect": "read",
        "decision": {"allow": true, "rule": "default-read"},
        "request_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "result_sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
        "labels": {"integrity": "trusted", "confidentiality": "private"},
        "duration_ms": n,
    })
}

fn audit(c: &mut Criterion) {
    let key = AuditKey::generate();
    let sample = record(3);

    let dir = tempfile::tempdir().unwrap();
    let file = Store::open(&dir.path().join("carapace.db")).unwrap();
    c.bench_function("append_audit/file", |b| {
        b.iter(|| file.append_audit(&key, &sample).unwrap())
    });

    let memory = Store::open_in_memory().unwrap();
    c.bench_function("append_audit/memory", |b| {
        b.iter(|| memory.append_audit(&key, &sample).unwrap())
    });

    let log = Store::open_in_memory().unwrap();
    for n in 0..1000 {
        log.append_audit(&key, &record(n)).unwrap();
    }
    c.bench_function("verify_audit/1000 records", |b| {
        b.iter(|| log.verify_audit(&key).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = audit
}
criterion_main!(benches);
