//! Name resolution: the [`Resolver`] trait the checks use, and the pinning resolver handed
//! to reqwest, which never resolves anything itself and only returns addresses a check
//! has already approved.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The future a [`Resolver`] returns.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a host name into addresses. The egress layer calls it exactly once per request
/// hop and connects only to addresses from that answer that passed the checks.
pub trait Resolver: Send + Sync {
    /// Resolves a domain name (never an IP literal; those are not resolved).
    fn resolve<'a>(&'a self, host: &'a str) -> Resolving<'a>;
}

/// The operating system's resolver (`getaddrinfo` through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> Resolving<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Checked addresses of the requests in flight, by URL host. Each entry holds the pins
/// of every in-flight request to that host; all of them passed the same checks (one
/// `Pins` serves one reqwest client, and a client serves one class of request), so any
/// of them is a correct answer for a connection that client opens.
#[derive(Default)]
pub(crate) struct Pins {
    next: AtomicU64,
    map: Mutex<HashMap<String, Vec<PinEntry>>>,
}

/// One request's checked addresses, by pin id.
type PinEntry = (u64, Vec<IpAddr>);

impl Pins {
    /// Pins `addrs` for `host` until the returned guard is dropped.
    pub(crate) fn pin(self: &Arc<Pins>, host: &str, addrs: &[IpAddr]) -> PinGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host.to_string())
            .or_default()
            .push((id, addrs.to_vec()));
        PinGuard {
            pins: Arc::clone(self),
            host: host.to_string(),
            id,
        }
    }

    fn lookup(&self, host: &str) -> Vec<IpAddr> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<IpAddr> = Vec::new();
        for (_, addrs) in map.get(host).into_iter().flatten() {
            for a in addrs {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        out
    }
}

/// Removes one request's pinned addresses when the request no longer needs them.
pub(crate) struct PinGuard {
    pins: Arc<Pins>,
    host: String,
    id: u64,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut map = self.pins.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = map.get_mut(&self.host) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.host);
            }
        }
    }
}

/// The resolver reqwest calls when it opens a connection: it answers from the pins and
/// fails for any host without one, so the connection goes exactly to checked addresses.
pub(crate) struct PinnedResolver(pub(crate) Arc<Pins>);

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs = self.0.lookup(name.as_str());
        Box::pin(async move {
            if addrs.is_empty() {
                return Err("no checked address for this host".into());
            }
            // Port 0 is replaced by the URL's port.
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_scoped_to_their_guard() {
        let pins = Arc::new(Pins::default());
        let a: IpAddr = "93.184.216.34".parse().unwrap();
        let b: IpAddr = "8.8.8.8".parse().unwrap();
        assert!(pins.lookup("example.com").is_empty());
        let g1 = pins.pin("example.com", &[a]);
        let g2 = pins.pin("example.com", &[a, b]);
        assert_eq!(pins.lookup("example.com"), vec![a, b]);
        assert!(pins.lookup("other.com").is_empty());
        drop(g2);
        assert_eq!(pins.lookup("example.com"), vec![a]);
        drop(g1);
        assert!(pins.lookup("example.com").is_empty());
        assert!(pins.map.lock().unwrap().is_empty());
    }
}
