//! Benchmarks of the Gate's hot path: one allowed call through every stage (envelope,
//! resolve, validate, authorize, policy, execute, sanitize & label, and the audit
//! append: one for a read, to a WAL SQLite file opened as the daemon opens it).
//!
//! Two calls: `noop` (a tool that does nothing, compiled in only with the `noop-tool`
//! feature) measures the Gate itself; `list_dir` on an empty workspace adds the cheapest
//! real executor (a blocking-pool hop and a readdir).
//! `cargo bench -p carapace-gate --features noop-tool` prints criterion's figures, then
//! p50/p99/max over 20 000 single calls of each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carapace_gate::{CallRequest, Gate, GateConfig, GateDeps, RawArgs, Scrubber, SharedScrubber};
use carapace_policy::Policy;
use carapace_store::{AuditKey, Store};
use carapace_types::{FrontDoor, Principal, Secret, SessionId};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

struct Bench {
    gate: Gate,
    session: SessionId,
    owner: Principal,
    _dir: tempfile::TempDir,
}

fn setup(on_disk: bool) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let store = if on_disk {
        Store::open_exclusive(&dir.path().join("carapace.db")).unwrap()
    } else {
        Store::open_in_memory().unwrap()
    };
    let store = Arc::new(store);
    let session = SessionId::new("s_bench");
    store.create_session(&session, "bench", 0).unwrap();
    let gate = Gate::new(GateDeps {
        store,
        audit_key: Arc::new(AuditKey::generate()),
        workspace_root: root,
        policy: Policy::strict(),
        judge: None,
        scrubber: SharedScrubber::new(Scrubber::new(&[Secret::new(
            "sk-bench-0123456789abcdef".to_string(),
        )])),
        // No rate limit in the way of a benchmark loop.
        config: GateConfig {
            rate_per_minute: u32::MAX,
            granted_tools: vec!["noop".into(), "list_dir".into()],
            ..GateConfig::default()
        },
        exec: None,
        net: None,
        channels: None,
        mcp: None,
    })
    .unwrap();
    Bench {
        gate,
        session,
        owner: Principal::owner(FrontDoor::Api),
        _dir: dir,
    }
}

async fn one_call(b: &Bench, tool: &str) {
    let args = if tool == "list_dir" {
        json!({ "path": "." })
    } else {
        json!({})
    };
    b.gate
        .call(CallRequest {
            principal: &b.owner,
            session: &b.session,
            call_id: "call_1",
            tool,
            args: RawArgs::Json(&args),
        })
        .await
        .expect("the allowed call succeeds");
}

fn gate_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench = setup(true);
    let mut group = c.benchmark_group("gate");
    group.measurement_time(Duration::from_secs(5));
    for tool in ["noop", "list_dir"] {
        group.bench_function(format!("allowed_{tool}_call_all_stages"), |b| {
            b.iter(|| rt.block_on(one_call(&bench, tool)))
        });
    }
    group.finish();

    // Criterion reports means; the target is a p99, so measure single calls too. The
    // in-memory store separates the Gate's own cost from SQLite's file writes.
    let in_memory = setup(false);
    for (tool, bench, store) in [
        ("noop", &bench, "wal-file, exclusive"),
        ("list_dir", &bench, "wal-file, exclusive"),
        ("noop", &in_memory, "in-memory"),
    ] {
        let mut samples: Vec<Duration> = Vec::with_capacity(20_000);
        rt.block_on(async {
            for _ in 0..20_000 {
                let t = Instant::now();
                one_call(bench, tool).await;
                samples.push(t.elapsed());
            }
        });
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "gate/allowed_{tool}_call_all_stages ({store} store) single calls: p50 {:?}  p99 {:?}  max {:?}  (n = {})",
            pct(0.50),
            pct(0.99),
            samples[samples.len() - 1],
            samples.len()
        );
    }
}

criterion_group!(benches, gate_call);
criterion_main!(benches);
