//! Network for a sandboxed stdio server whose entry says `network = "egress"`: an HTTP
//! CONNECT proxy on a Unix socket of the daemon, the sandbox's only way out.
//!
//! The server's sandbox has loopback only. Its first program is the relay
//! ([`crate::relay`]), which listens on a loopback port inside, points the server's
//! `HTTPS_PROXY` at it, and carries each connection byte for byte to this socket. Here
//! each connection must open with `CONNECT host:port HTTP/1.1`; the destination is
//! checked by the egress layer exactly as an HTTP request of the server would be (the
//! configuration's allowlist narrowed to the entry's `allow_hosts`, the private-address
//! guard on every resolved address, `deny_ranges`), the decision is written to the audit
//! log before any connection is made, and the tunnel goes to the checked addresses only,
//! so a name cannot resolve to one address when checked and another when used. Anything
//! but CONNECT gets a 405: plain http through the proxy would let one connection carry
//! requests for other hosts.
//!
//! The tunnel carries what the server sends (normally TLS), so the egress layer cannot
//! inject credentials into it or cap its size: a server that needs a secret gets it in
//! its environment (`env = { X = { vault = "..." } }`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carapace_egress::{Egress, Scope};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Appends one record to the audit log: the event name and its fields. An error refuses
/// the connection the record was for.
pub type Audit = Arc<dyn Fn(&str, Value) -> Result<(), String> + Send + Sync>;

/// The audit event of every tunnel decision.
pub const AUDIT_EVENT: &str = "mcp_egress";
/// The longest CONNECT request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one checked address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels one server may have open at once.
pub const MAX_TUNNELS: usize = 32;
/// Connections of one server the daemon holds at once, whatever their state (waiting
/// for a head, being refused, tunnelling). Past it a connection is closed at once,
/// unanswered, so a server cannot spend the daemon's file descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a refused connection is read from (so the refusal is not lost to a reset).
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Connections one server may start a minute; past it each is refused with a 429, and
/// only the first such refusal of the minute is recorded, so a server cannot fill the
/// audit log.
pub const MAX_PER_MINUTE: u32 = 120;

/// What a stdio server's egress needs, resolved by the caller.
#[derive(Clone)]
pub struct StdioEgress {
    /// The egress client, with the configuration's allowlists.
    pub egress: Egress,
    /// The server's own narrower hosts (`allow_hosts` of its entry), if any.
    pub scope: Scope,
    /// Where the daemon listens for this server's tunnels (created at start; its
    /// directory should be the daemon's own, mode 0700).
    pub socket: PathBuf,
    /// The relay program on the host (the `cara` binary), shown read-only inside.
    pub relay: PathBuf,
    /// Where the tunnel decisions are recorded.
    pub audit: Audit,
}

impl std::fmt::Debug for StdioEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioEgress")
            .field("allow_hosts", &self.scope.allow_hosts)
            .field("socket", &self.socket)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// What `cara mcp list` shows of a server's tunnels.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EgressStats {
    /// Tunnels opened since the daemon started.
    pub opened: u64,
    /// Tunnels open now.
    pub open: u64,
    /// Connections refused (destination not allowed, bad request, too many).
    pub refused: u64,
    /// The last refusal: destination and reason.
    pub last_refused: Option<String>,
}

/// The proxy of one server: its listener task and its counts.
pub(crate) struct Tunnels {
    pub stats: Arc<Mutex<EgressStats>>,
    task: JoinHandle<()>,
    socket: PathBuf,
}

impl Tunnels {
    /// Binds the server's socket (a stale socket at the path is replaced; anything else
    /// there is an error) and starts accepting.
    pub fn listen(server: &str, cfg: &StdioEgress) -> Result<Tunnels, String> {
        let path = &cfg.socket;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                let _ = std::fs::remove_file(path);
            }
            Ok(_) => return Err(format!("{} exists and is not a socket", path.display())),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        let stats = Arc::new(Mutex::new(EgressStats::default()));
        let proxy = Arc::new(Proxy {
            server: server.to_string(),
            egress: cfg.egress.clone(),
            scope: cfg.scope.clone(),
            audit: cfg.audit.clone(),
            stats: stats.clone(),
            slots: Arc::new(Semaphore::new(MAX_TUNNELS)),
            window: Mutex::new((tokio::time::Instant::now(), 0)),
            overflow_recorded: Mutex::new(None),
        });
        let held = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let Ok(hold) = held.clone().try_acquire_owned() else {
                            drop(conn);
                            proxy.overflow();
                            continue;
                        };
                        let proxy = proxy.clone();
                        tokio::spawn(async move {
                            proxy.serve(conn).await;
                            drop(hold);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(server = %proxy.server, error = %e, "egress socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Tunnels {
            stats,
            task,
            socket: path.clone(),
        })
    }
}

impl Drop for Tunnels {
    /// Stops accepting and removes the socket; open tunnels end with their process.
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Proxy {
    server: String,
    egress: Egress,
    scope: Scope,
    audit: Audit,
    stats: Arc<Mutex<EgressStats>>,
    slots: Arc<Semaphore>,
    /// The current minute's start and the connections started in it.
    window: Mutex<(tokio::time::Instant, u32)>,
    /// When a connection past [`MAX_CONNECTIONS`] was last recorded (once a minute).
    overflow_recorded: Mutex<Option<tokio::time::Instant>>,
}

/// Why a connection got no tunnel: the status line and the reason shown to the server.
struct Refusal {
    status: &'static str,
    dest: Option<String>,
    reason: String,
}

impl Refusal {
    fn new(status: &'static str, dest: Option<&str>, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            dest: dest.map(str::to_string),
            reason: reason.into(),
        }
    }
}

impl Proxy {
    /// Counts a connection closed unanswered because [`MAX_CONNECTIONS`] are held, and
    /// records the first of each minute.
    fn overflow(&self) {
        let reason = format!("more than {MAX_CONNECTIONS} connections at once");
        {
            let mut s = lock(&self.stats);
            s.refused += 1;
            s.last_refused = Some(reason.clone());
        }
        let record = {
            let mut last = lock(&self.overflow_recorded);
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if due {
                *last = Some(tokio::time::Instant::now());
            }
            due
        };
        if record {
            let fields = json!({
                "server": self.server, "dest": null, "outcome": "refused", "reason": reason,
            });
            if let Err(e) = (self.audit)(AUDIT_EVENT, fields) {
                tracing::warn!(server = %self.server, error = %e, "cannot record a refused tunnel");
            }
        }
    }

    async fn serve(&self, mut conn: UnixStream) {
        let started = {
            let mut w = lock(&self.window);
            if w.0.elapsed() >= Duration::from_secs(60) {
                *w = (tokio::time::Instant::now(), 0);
            }
            w.1 = w.1.saturating_add(1);
            w.1
        };
        if started > MAX_PER_MINUTE {
            let r = Refusal::new(
                "429 Too Many Requests",
                None,
                format!("more than {MAX_PER_MINUTE} connections a minute"),
            );
            let record = started == MAX_PER_MINUTE + 1;
            return self.refuse_as(&mut conn, r, record).await;
        }
        let (dest, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
            Err(_) => {
                let r = Refusal::new("408 Request Timeout", None, "no request head in time");
                return self.refuse(&mut conn, r).await;
            }
            Ok(Err(r)) => return self.refuse(&mut conn, r).await,
            Ok(Ok(head)) => head,
        };
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let r = Refusal::new(
                "503 Service Unavailable",
                Some(&dest),
                format!("more than {MAX_TUNNELS} tunnels open"),
            );
            self.refuse(&mut conn, r).await;
            return;
        };
        let upstream = match self.open(&dest).await {
            Ok(s) => s,
            Err(r) => return self.refuse(&mut conn, r).await,
        };
        let (addr, mut upstream) = upstream;
        lock(&self.stats).opened += 1;
        lock(&self.stats).open += 1;
        let mut sent = rest.len() as u64;
        let copied = async {
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
            upstream.write_all(&rest).await?;
            tokio::io::copy_bidirectional(&mut conn, &mut upstream).await
        }
        .await;
        lock(&self.stats).open -= 1;
        let (up, down) = copied.as_ref().map(|c| *c).unwrap_or((0, 0));
        sent += up;
        let mut record = json!({
            "server": self.server, "dest": dest, "addr": addr, "outcome": "closed",
            "sent_bytes": sent, "received_bytes": down,
        });
        if let Err(e) = copied {
            record["error"] = json!(e.to_string());
        }
        if let Err(e) = (self.audit)(AUDIT_EVENT, record) {
            tracing::warn!(server = %self.server, error = %e, "cannot record a closed tunnel");
        }
    }

    /// Checks `dest`, records the decision, connects to a checked address.
    async fn open(&self, dest: &str) -> Result<(String, TcpStream), Refusal> {
        let checked = self
            .egress
            .check_tunnel(dest, &self.scope)
            .await
            .map_err(|e| Refusal::new("403 Forbidden", Some(dest), e.to_string()))?;
        let addrs = checked.addrs();
        // Write-ahead: the decision is on record before a packet leaves.
        (self.audit)(
            AUDIT_EVENT,
            json!({
                "server": self.server, "dest": dest, "outcome": "allowed",
                "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            }),
        )
        .map_err(|e| {
            Refusal::new(
                "503 Service Unavailable",
                Some(dest),
                format!("cannot record: {e}"),
            )
        })?;
        let mut last = String::from("no address");
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok((addr.to_string(), s)),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer in {CONNECT_TIMEOUT:?}"),
            }
        }
        Err(Refusal::new(
            "502 Bad Gateway",
            Some(dest),
            format!("cannot connect: {last}"),
        ))
    }

    /// Answers with the refusal (plain text, so the server's HTTP library can show it)
    /// and records it.
    async fn refuse(&self, conn: &mut UnixStream, r: Refusal) {
        self.refuse_as(conn, r, true).await;
    }

    /// Like [`Proxy::refuse`]; `record`: whether the refusal goes to the audit log.
    async fn refuse_as(&self, conn: &mut UnixStream, r: Refusal, record: bool) {
        let what = match &r.dest {
            Some(d) => format!("{d}: {}", r.reason),
            None => r.reason.clone(),
        };
        {
            let mut s = lock(&self.stats);
            s.refused += 1;
            s.last_refused = Some(what);
        }
        if record {
            let fields = json!({
                "server": self.server, "dest": r.dest, "outcome": "refused", "reason": r.reason,
            });
            if let Err(e) = (self.audit)(AUDIT_EVENT, fields) {
                tracing::warn!(server = %self.server, error = %e, "cannot record a refused tunnel");
            }
        }
        let body = format!("carapace egress: {}\n", r.reason);
        let answer = format!(
            "HTTP/1.1 {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            r.status,
            body.len()
        );
        let _ = conn.write_all(answer.as_bytes()).await;
        let _ = conn.shutdown().await;
        // Closing with unread bytes would reset the connection and lose the answer: read
        // what the client still sends, a little and briefly (one deadline for all), first.
        let drain = async {
            let mut sink = [0u8; 4096];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match conn.read(&mut sink).await {
                    Ok(n) if n > 0 => left = left.saturating_sub(n),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the request head; returns the CONNECT destination (`host:port`) and any bytes
/// read past the head (the start of the tunnel's payload).
async fn read_head(conn: &mut UnixStream) -> Result<(String, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let too_large = || {
        Refusal::new(
            "431 Request Header Fields Too Large",
            None,
            format!("request head over {MAX_HEAD} bytes"),
        )
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if i + 4 > MAX_HEAD {
                return Err(too_large());
            }
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(too_large());
        }
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return Err(Refusal::new(
                "400 Bad Request",
                None,
                "the connection closed before a request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or_default();
    let dest = parse_connect(line)?;
    Ok((dest, rest))
}

/// `CONNECT host:port HTTP/1.x` -> `host:port`, the port required and the host a name
/// or an address (IPv6 in brackets), nothing else.
fn parse_connect(line: &str) -> Result<String, Refusal> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let bad = |why: &str| Refusal::new("400 Bad Request", None, why.to_string());
    let (Some(method), Some(target), Some(version), None) = (method, target, version, parts.next())
    else {
        return Err(bad("a malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1 request"));
    }
    if method != "CONNECT" {
        return Err(Refusal::new(
            "405 Method Not Allowed",
            None,
            format!("{method}: only CONNECT (https) goes through this proxy"),
        ));
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(bad("the CONNECT target needs host:port"));
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if !port_ok || !host_ok {
        return Err(bad("the CONNECT target is not host:port"));
    }
    Ok(target.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use carapace_egress::EgressConfig;

    use super::*;

    /// A proxy allowing `127.0.0.1:port` of a local server that answers "hi", with its
    /// audit records.
    async fn proxy(dir: &std::path::Path) -> (Tunnels, PathBuf, Arc<Mutex<Vec<Value>>>, u16) {
        let (tunnels, socket, records, port, _) = proxy_with(dir, Ok(())).await;
        (tunnels, socket, records, port)
    }

    /// Like [`proxy`]; every audit append answers `audit`; also returns how many
    /// connections the local server accepted.
    async fn proxy_with(
        dir: &std::path::Path,
        audit: Result<(), String>,
    ) -> (
        Tunnels,
        PathBuf,
        Arc<Mutex<Vec<Value>>>,
        u16,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepts.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = s.write_all(b"hi").await;
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                });
            }
        });
        let dest = format!("127.0.0.1:{port}");
        let egress = Egress::new(EgressConfig {
            allow_hosts: vec![dest.clone()],
            allow_private: vec![dest],
            ..EgressConfig::default()
        })
        .unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let socket = dir.join("s.sock");
        let cfg = StdioEgress {
            egress,
            scope: Scope::default(),
            socket: socket.clone(),
            relay: PathBuf::from("/nonexistent"),
            audit: Arc::new(move |event: &str, fields: Value| {
                assert_eq!(event, AUDIT_EVENT);
                lock(&sink).push(fields);
                audit.clone()
            }),
        };
        let tunnels = Tunnels::listen("t", &cfg).unwrap();
        (tunnels, socket, records, port, accepts)
    }

    async fn exchange(socket: &std::path::Path, send: &[u8]) -> String {
        let mut c = UnixStream::connect(socket).await.unwrap();
        c.write_all(send).await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn bad_heads_are_refused_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (tunnels, socket, records, port) = proxy(dir.path()).await;
        let big = format!(
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let got = exchange(&socket, big.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got:?}");
        let garbage = exchange(&socket, b"\x16\x03\x01 hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        let early = exchange(&socket, b"CONNECT 127.0.0.1:").await;
        assert!(
            early.starts_with("HTTP/1.1 400 ") && early.contains("closed before a request"),
            "{early}"
        );
        let ok = exchange(
            &socket,
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(ok, "HTTP/1.1 200 Connection established\r\n\r\nhi");
        let stats = lock(&tunnels.stats).clone();
        assert_eq!((stats.opened, stats.refused), (1, 3), "{stats:?}");
        // The closing record follows the end of the copy, just after the client saw it.
        let mut outcomes: Vec<String> = Vec::new();
        for _ in 0..100 {
            outcomes = lock(&records)
                .iter()
                .map(|r| r["outcome"].as_str().unwrap().to_string())
                .collect();
            if outcomes.iter().any(|o| o == "closed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            outcomes.iter().filter(|o| *o == "refused").count(),
            3,
            "{outcomes:?}"
        );
        assert!(outcomes.contains(&"allowed".to_string()), "{outcomes:?}");
        assert!(outcomes.contains(&"closed".to_string()), "{outcomes:?}");
        drop(tunnels);
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn a_flood_of_connections_is_cut_and_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tunnels, socket, records, _port) = proxy(dir.path()).await;
        for _ in 0..MAX_PER_MINUTE + 10 {
            let got = exchange(&socket, b"GET / HTTP/1.1\r\n\r\n").await;
            assert!(
                got.starts_with("HTTP/1.1 405 ") || got.starts_with("HTTP/1.1 429 "),
                "{got}"
            );
        }
        let got = exchange(&socket, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 429 "), "{got}");
        assert!(got.contains("more than 120 connections a minute"), "{got}");
        let stats = lock(&tunnels.stats).clone();
        assert_eq!(stats.refused, u64::from(MAX_PER_MINUTE) + 11, "{stats:?}");
        // 120 refusals of the GET, one of the flood.
        assert_eq!(lock(&records).len(), MAX_PER_MINUTE as usize + 1);
    }

    #[tokio::test]
    async fn at_most_max_tunnels_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let (tunnels, socket, _records, port) = proxy(dir.path()).await;
        let mut open = Vec::new();
        for _ in 0..MAX_TUNNELS {
            let mut c = UnixStream::connect(&socket).await.unwrap();
            c.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut head = [0u8; 41];
            c.read_exact(&mut head).await.unwrap();
            assert!(head.starts_with(b"HTTP/1.1 200 "));
            open.push(c);
        }
        let one_more = exchange(
            &socket,
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(one_more.starts_with("HTTP/1.1 503 "), "{one_more}");
        assert_eq!(lock(&tunnels.stats).open, MAX_TUNNELS as u64);
        drop(open);
    }

    #[tokio::test]
    async fn no_record_no_tunnel() {
        let dir = tempfile::tempdir().unwrap();
        let (_tunnels, socket, records, port, accepts) =
            proxy_with(dir.path(), Err("disk full".to_string())).await;
        let got = exchange(
            &socket,
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("cannot record: disk full"), "{got}");
        // The decision was attempted first; nothing was connected.
        assert_eq!(lock(&records)[0]["outcome"], "allowed");
        assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn connections_past_the_hold_limit_are_closed_unanswered() {
        let dir = tempfile::tempdir().unwrap();
        let (tunnels, socket, records, _port) = proxy(dir.path()).await;
        // Silent clients: each is held while the proxy waits for its head.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(UnixStream::connect(&socket).await.unwrap());
        }
        for _ in 0..3 {
            let mut c = UnixStream::connect(&socket).await.unwrap();
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
            assert!(matches!(read, Ok(Ok(0))), "{read:?} {got:?}");
        }
        let stats = lock(&tunnels.stats).clone();
        assert_eq!(stats.refused, 3, "{stats:?}");
        assert_eq!(
            stats.last_refused.as_deref(),
            Some("more than 64 connections at once")
        );
        // Recorded once, not once per connection.
        let refused: Vec<Value> = lock(&records)
            .iter()
            .filter(|r| r["outcome"] == "refused")
            .cloned()
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        // Once the silent ones go, connections are served again.
        drop(silent);
        let mut answer = String::new();
        for _ in 0..100 {
            answer = exchange(&socket, b"GET / HTTP/1.1\r\n\r\n").await;
            if !answer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer:?}");
    }

    fn dest(line: &str) -> Result<String, (String, String)> {
        parse_connect(line).map_err(|r| (r.status.to_string(), r.reason))
    }

    #[test]
    fn connect_targets_are_host_and_port_only() {
        assert_eq!(
            dest("CONNECT api.GitHub.com:443 HTTP/1.1").unwrap(),
            "api.github.com:443"
        );
        assert_eq!(dest("CONNECT [::1]:8443 HTTP/1.1").unwrap(), "[::1]:8443");
        assert_eq!(dest("CONNECT 10.0.0.1:22 HTTP/1.0").unwrap(), "10.0.0.1:22");
        for bad in [
            "CONNECT api.github.com HTTP/1.1",
            "CONNECT api.github.com:0 HTTP/1.1",
            "CONNECT api.github.com:65536 HTTP/1.1",
            "CONNECT user@evil.com:443 HTTP/1.1",
            "CONNECT evil.com/x:443 HTTP/1.1",
            "CONNECT evil.com:443#:1 HTTP/1.1",
            "CONNECT [::1:443 HTTP/1.1",
            "CONNECT :443 HTTP/1.1",
            "CONNECT a.com:443 HTTP/2",
            "CONNECT a.com:443  HTTP/1.1",
            "CONNECT a.com:443",
        ] {
            let (status, _) = dest(bad).unwrap_err();
            assert!(status.starts_with("400"), "{bad}: {status}");
        }
    }

    #[test]
    fn other_methods_get_405() {
        let (status, reason) = dest("GET http://example.com/ HTTP/1.1").unwrap_err();
        assert!(status.starts_with("405"), "{status}");
        assert!(reason.contains("only CONNECT"), "{reason}");
    }
}
