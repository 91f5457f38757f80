//! Benchmarks of the agent socket: `tools.call` of a tool that does nothing, over a real
//! Unix socket, and what identifying a connection costs.
//!
//! 1. `agent_socket/tools_call_noop_round_trip`: one client, one connection, sequential
//!    requests (write a line, read a line). The server is `AgentSocket::serve` on a
//!    2-worker Tokio runtime; each call goes through every Gate stage under the strict
//!    policy preset and appends to the audit log of a WAL SQLite file opened as the daemon
//!    opens it, so the figures include that write. The client is a blocking thread, as an
//!    agent in another process would be. The target is p99 under 200 µs.
//! 2. `agent_socket/identify_peer`: `carapace_sandbox::peer` on a connected socket pair
//!    (`SO_PEERCRED`, `SO_PEERPIDFD`, opening `/proc/PID/ns/pid`), paid once per
//!    connection. The server in (1) and (3) identifies with a bench-only [`Identify`] that
//!    accepts every connection as one fixed run and session: the real one is this
//!    kernel read, timed here on its own, plus a `HashMap` lookup under a mutex.
//! 3. Sustained throughput: 8 clients, each on its own connection doing plain request and
//!    response (no pipelining), for 5 s; total calls per second.
//!
//! `cargo bench -p carapace-server --bench agent_socket` prints criterion's figures, then
//! mean/p50/p99/p99.9/max over 20 000 single round trips and 200 000 identifications,
//! then the throughput and the latency under it. The `noop` tool exists only with
//! carapace-gate's `noop-tool` feature, which this crate's dev-dependency turns on (it is
//! never granted by default).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carapace_gate::{Gate, GateConfig, GateDeps, Scrubber, SharedScrubber};
use carapace_policy::Policy;
use carapace_server::agent_socket::{AgentIdentity, AgentSocket, Identify, Refusal};
use carapace_store::{AuditKey, Store};
use carapace_types::{Secret, SessionId};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};

const CLIENTS: usize = 8;
const SUSTAIN: Duration = Duration::from_secs(5);

/// Accepts every connection as the same run (bench only; see the crate doc).
struct OneRun(AgentIdentity);

impl Identify for OneRun {
    fn identify(&self, _stream: &UnixStream) -> Result<AgentIdentity, Refusal> {
        Ok(self.0.clone())
    }
}

struct Server {
    socket: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The daemon's side: a Gate granting only `noop`, its store a WAL file, and the agent
/// socket serving in a temp dir on a 2-worker runtime (as `cara serve` on this machine).
fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let store = Arc::new(Store::open_exclusive(&dir.path().join("carapace.db")).unwrap());
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
            granted_tools: vec!["noop".into()],
            ..GateConfig::default()
        },
        exec: None,
        net: None,
        channels: None,
        mcp: None,
    })
    .unwrap();
    let identify = Arc::new(OneRun(AgentIdentity {
        run: "run_bench".into(),
        session,
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = rt.block_on(async { UnixListener::bind(&socket) }).unwrap();
    rt.spawn(AgentSocket::new(gate, identify, None).serve(listener));
    Server {
        socket,
        _rt: rt,
        _dir: dir,
    }
}

/// An agent's connection: blocking, one request in flight.
struct Client {
    w: StdStream,
    r: BufReader<StdStream>,
    line: String,
    next_id: u64,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let w = StdStream::connect(socket).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Client {
            w,
            r,
            line: String::new(),
            next_id: 1,
        }
    }

    /// One `tools.call` of `noop`, returning the response line.
    fn call(&mut self) -> &str {
        let id = self.next_id;
        self.next_id += 1;
        let req = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools.call\",\
             \"params\":{{\"name\":\"noop\",\"arguments\":{{}}}}}}\n"
        );
        self.w.write_all(req.as_bytes()).unwrap();
        self.line.clear();
        self.r.read_line(&mut self.line).unwrap();
        // Cheap check in the loop; the first answer is checked in full below.
        assert!(self.line.contains("\"result\""), "{}", self.line);
        &self.line
    }
}

/// mean, p50, p99, p99.9 and max of `samples` (sorted in place), and how many took
/// over a millisecond. On a quiet machine those are the WAL checkpoints: every few
/// hundred calls SQLite copies the log into the database file and syncs both, inside
/// the call whose commit crossed the threshold.
fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let n = samples.len();
    let pct = |p: f64| samples[((n as f64 * p) as usize).min(n - 1)];
    let mean = samples.iter().sum::<Duration>() / n as u32;
    let slow = n - samples.partition_point(|d| *d <= Duration::from_millis(1));
    println!(
        "{name}: mean {mean:?}  p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}  (n = {n}, {slow} over 1 ms)",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[n - 1],
    );
}

fn agent_socket(c: &mut Criterion) {
    let server = start();
    let mut client = Client::connect(&server.socket);
    let first: Value = serde_json::from_str(client.call()).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(first["result"]["source"], "tool:noop", "{first}");

    let (a, _b) = StdStream::pair().unwrap();
    let me = carapace_sandbox::peer(a.as_fd()).unwrap();
    assert_eq!(me.pid, std::process::id() as i32);

    let mut group = c.benchmark_group("agent_socket");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("tools_call_noop_round_trip", |b| {
        b.iter(|| black_box(client.call().len()))
    });
    group.bench_function("identify_peer", |b| {
        b.iter(|| carapace_sandbox::peer(black_box(a.as_fd())).unwrap())
    });
    group.finish();

    // Criterion reports means; the target is a p99, so time single calls too.
    let mut samples: Vec<Duration> = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        black_box(client.call().len());
        samples.push(t.elapsed());
    }
    summary(
        "agent_socket/tools_call_noop_round_trip single calls",
        &mut samples,
    );
    drop(client);

    let mut samples: Vec<Duration> = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        let t = Instant::now();
        black_box(carapace_sandbox::peer(black_box(a.as_fd())).unwrap());
        samples.push(t.elapsed());
    }
    summary("agent_socket/identify_peer single calls", &mut samples);

    // Sustained: every client on its own connection and thread, as separate agents are.
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| Client::connect(&server.socket))
        .collect();
    let start = Instant::now();
    let deadline = start + SUSTAIN;
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(200_000);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    black_box(client.call().len());
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let per_client: Vec<Vec<Duration>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();
    let counts: Vec<usize> = per_client.iter().map(Vec::len).collect();
    let total: usize = counts.iter().sum();
    println!(
        "agent_socket/sustained {CLIENTS} clients: {total} calls in {elapsed:.2?} = {:.0} calls/s \
         (per client min {} max {})",
        total as f64 / elapsed.as_secs_f64(),
        counts.iter().min().unwrap(),
        counts.iter().max().unwrap(),
    );
    let mut all: Vec<Duration> = per_client.into_iter().flatten().collect();
    summary(
        &format!("agent_socket/sustained {CLIENTS} clients round trip"),
        &mut all,
    );
}

criterion_group!(benches, agent_socket);
criterion_main!(benches);
