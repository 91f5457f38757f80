//! Talking to a running gateway from the CLI: find it, start it, call its API.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carapace_types::Secret;
use serde_json::Value;

use crate::config;
use crate::datadir::DataDir;

/// A gateway that answered `/health`.
pub struct Daemon {
    pub addr: SocketAddr,
    token: Secret<String>,
    http: reqwest::Client,
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("cannot build an HTTP client")
}

/// The address a gateway for this data directory would listen on: the running one's
/// `daemon.json`, else the configured bind.
fn candidate_addrs(dd: &DataDir) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    if let Some(addr) = std::fs::read_to_string(dd.daemon_file())
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
    {
        addrs.push(addr);
    }
    if let Ok(file) = config::load(&dd.config())
        && let Ok(s) = config::settings(&dd.config(), &file, &|k| std::env::var(k).ok())
    {
        addrs.push(s.bind);
    }
    addrs.dedup();
    addrs
}

impl Daemon {
    /// Finds a running gateway for this data directory. A process that answers on the
    /// port but cannot prove it holds the token is not ours: the token is never sent to it.
    pub async fn find(dd: &DataDir) -> anyhow::Result<Option<Daemon>> {
        let http = http_client()?;
        let addrs = candidate_addrs(dd);
        if addrs.is_empty() {
            return Ok(None);
        }
        let token = match dd.read_token() {
            Ok(t) => t,
            // No token yet means no daemon ever started here.
            Err(_) if !dd.token().exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        for addr in addrs {
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).context("the OS random source failed")?;
            let challenge = hex::encode(nonce);
            let health = http
                .get(format!("http://{addr}/health?challenge={challenge}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let Ok(resp) = health else { continue };
            if !resp.status().is_success() {
                continue;
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let expected = carapace_server::health_proof(token.expose().as_bytes(), &challenge);
            if body["proof"].as_str() == Some(expected.as_str()) {
                return Ok(Some(Daemon { addr, token, http }));
            }
            eprintln!(
                "cara: something answers on {addr} but is not the gateway of {} (it could not prove it holds the token); not sending it the token",
                dd.root().display()
            );
        }
        Ok(None)
    }

    /// Finds the gateway or explains how to start one.
    pub async fn require(dd: &DataDir) -> anyhow::Result<Daemon> {
        match Daemon::find(dd).await? {
            Some(d) => Ok(d),
            None => bail!(
                "no gateway is running for {}; start one with `cara serve` (or `cara chat`, which starts it)",
                dd.root().display()
            ),
        }
    }

    /// Starts `cara serve` in the background, detached from this terminal, with its
    /// output in logs/daemon.log, and waits until it answers.
    pub async fn start(dd: &DataDir) -> anyhow::Result<Daemon> {
        dd.prepare()?;
        let log_path = dd.logs().join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let exe = std::env::current_exe().context("cannot find the cara executable")?;
        let mut child = std::process::Command::new(exe);
        child
            .arg("--data-dir")
            .arg(dd.root())
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: Ctrl-C in the chat must not stop the gateway.
        std::os::unix::process::CommandExt::process_group(&mut child, 0);
        let mut child = child.spawn().context("cannot start `cara serve`")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the gateway exited ({status}) while starting:\n{}\n(full log: {})",
                    tail.join("\n"),
                    log_path.display()
                );
            }
            if let Some(d) = Daemon::find(dd).await? {
                return Ok(d);
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!(
                    "the gateway did not answer within 15 s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn token(&self) -> &Secret<String> {
        &self.token
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(self.token.expose())
            .send()
            .await;
        read(r.context("the gateway did not answer")?).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await;
        read(r.context("the gateway did not answer")?).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .put(format!("http://{}{path}", self.addr))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await;
        read(r.context("the gateway did not answer")?).await
    }
}

async fn read(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let body: Value = r
        .json()
        .await
        .context("the gateway sent a malformed answer")?;
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("unknown error");
        let code = body["error"]["code"].as_str().unwrap_or("ERROR");
        bail!("{code}: {message}");
    }
    Ok(body)
}
