//! Local HTTP/1.1 servers that record every connection and request, and test resolvers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carapace_egress::{Resolver, Resolving};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// One request as the server saw it on the wire.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// More of the body, sent chunked after `body`; each part waits for a permit of `gate`.
    pub parts: Vec<Vec<u8>>,
    pub gate: Option<Arc<Semaphore>>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body: body.into(),
            delay: Duration::ZERO,
            parts: Vec::new(),
            gate: None,
        }
    }

    pub fn text(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200, "text/plain; charset=utf-8", body)
    }

    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply {
            status,
            headers: vec![("location".to_string(), location.to_string())],
            body: Vec::new(),
            delay: Duration::ZERO,
            parts: Vec::new(),
            gate: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The body followed by `parts`, each sent when `gate` gives one more permit, so a
    /// test decides when the body goes on (and whether it has ended).
    pub fn then(mut self, parts: &[&str], gate: &Arc<Semaphore>) -> Reply {
        self.parts = parts.iter().map(|p| p.as_bytes().to_vec()).collect();
        self.gate = Some(Arc::clone(gate));
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A server on 127.0.0.1 (and [::1] on the same port when possible).
pub struct Server {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Server {
        let handler: Handler = Arc::new(handler);
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = TcpListener::bind(("::1", port)).await.ok();
        let server = Server {
            port,
            connections: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        for listener in std::iter::once(v4).chain(v6) {
            let connections = Arc::clone(&server.connections);
            let requests = Arc::clone(&server.requests);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let requests = Arc::clone(&requests);
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        let _ = serve_one(stream, requests, handler).await;
                    });
                }
            });
        }
        server
    }

    /// A server that answers every request with `reply`.
    pub async fn fixed(reply: Reply) -> Server {
        Server::start(move |_| reply.clone()).await
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_one(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Handler,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let recorded = Recorded {
        method,
        target,
        headers,
        body,
    };
    requests.lock().unwrap().push(recorded.clone());
    let reply = handler(&recorded);
    tokio::time::sleep(reply.delay).await;
    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    let Some(gate) = &reply.gate else {
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            reply.body.len()
        ));
        stream.write_all(out.as_bytes()).await?;
        stream.write_all(&reply.body).await?;
        return stream.shutdown().await;
    };
    out.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    stream.write_all(out.as_bytes()).await?;
    for (i, part) in std::iter::once(&reply.body).chain(&reply.parts).enumerate() {
        if i > 0 {
            gate.acquire().await.expect("gate open").forget();
        }
        if !part.is_empty() {
            stream
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await?;
            stream.write_all(part).await?;
            stream.write_all(b"\r\n").await?;
        }
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.shutdown().await
}

/// Answers from a fixed map and counts every call.
pub struct MapResolver {
    map: HashMap<String, Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl MapResolver {
    pub fn new(entries: &[(&str, &[&str])]) -> Arc<MapResolver> {
        Arc::new(MapResolver {
            map: entries
                .iter()
                .map(|(h, ips)| {
                    (
                        h.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Resolver for MapResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> Resolving<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .map
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
        Box::pin(async move { answer })
    }
}

/// Answers `first` on the first call and `then` on every later one (DNS rebinding).
pub struct RebindResolver {
    first: IpAddr,
    then: IpAddr,
    calls: AtomicUsize,
}

impl RebindResolver {
    pub fn new(first: &str, then: &str) -> Arc<RebindResolver> {
        Arc::new(RebindResolver {
            first: first.parse().unwrap(),
            then: then.parse().unwrap(),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Resolver for RebindResolver {
    fn resolve<'a>(&'a self, _host: &'a str) -> Resolving<'a> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let ip = if n == 0 { self.first } else { self.then };
        Box::pin(async move { Ok(vec![ip]) })
    }
}

/// Sanity helper for tests that need a socket address string.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
