//! The egress client against local servers that record every connection: SSRF attempts,
//! allowlists, credential injection and limits. Nothing here touches the internet.

mod support;

use std::sync::Arc;
use std::time::Duration;

use carapace_egress::{
    Egress, EgressConfig, EgressError, EgressRequest, EgressStream, Injection, Place, Resolver,
    Scope,
};
use carapace_types::Secret;
use futures_util::StreamExt;
use support::{MapResolver, RebindResolver, Reply, Server};
use tokio::sync::Semaphore;

const SECRET: &str = "sk-test-4f9a2c71e8";

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn config(allow_hosts: &[&str], allow_private: &[&str], allow_http: &[&str]) -> EgressConfig {
    EgressConfig {
        allow_hosts: strings(allow_hosts),
        allow_private: strings(allow_private),
        allow_http: strings(allow_http),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(300),
        ..EgressConfig::default()
    }
}

fn egress(config: EgressConfig, resolver: Arc<dyn Resolver>) -> Egress {
    Egress::with_resolver(config, resolver).unwrap()
}

fn no_names() -> Arc<MapResolver> {
    MapResolver::new(&[])
}

async fn get(egress: &Egress, url: &str) -> Result<carapace_egress::EgressResponse, EgressError> {
    egress
        .send(EgressRequest::get(url), &Scope::default())
        .await
}

fn assert_blocked(result: Result<impl std::fmt::Debug, EgressError>, range: &str, case: &str) {
    match result {
        Err(EgressError::AddressBlocked { range: r, .. }) => {
            assert!(
                r.contains(range),
                "{case}: blocked by {r:?}, expected {range:?}"
            )
        }
        other => panic!("{case}: expected address_blocked, got {other:?}"),
    }
}

fn header_injection(hosts: &[&str]) -> Injection {
    Injection {
        hosts: strings(hosts),
        place: Place::Header {
            name: "Authorization".to_string(),
            format: "Bearer {}".to_string(),
        },
        value: Secret::new(SECRET.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// SSRF

#[tokio::test]
async fn private_literals_in_every_notation_are_blocked() {
    let server = Server::fixed(Reply::text("internal")).await;
    let p = server.port;
    let cases: &[(&str, &str)] = &[
        ("127.0.0.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("0x7f.1", "loopback"),
        ("%31%32%37.0.0.1", "loopback"),
        ("[::1]", "loopback ::1"),
        ("[::ffff:127.0.0.1]", "ipv4-mapped"),
        ("[::ffff:7f00:1]", "ipv4-mapped"),
        ("[64:ff9b::7f00:1]", "nat64"),
        ("[::127.0.0.1]", "ipv4-compatible"),
        ("[2002:7f00:1::]", "6to4"),
        ("[2001::1]", "teredo"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private 10"),
        ("172.16.5.4", "private 172.16"),
        ("192.168.0.1", "private 192.168"),
        ("100.64.0.1", "shared address space"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("[fe80::1]", "link-local fe80"),
        ("[fc00::1]", "unique-local"),
        ("[ff02::1]", "multicast"),
    ];
    for (host, range) in cases {
        let entry = format!("{host}:{p}");
        let egress = egress(config(&[&entry], &[], &[&entry]), no_names());
        let url = format!("http://{host}:{p}/");
        assert_blocked(egress.check_url(&url, &Scope::default()).await, range, host);
        assert_blocked(get(&egress, &url).await, range, host);
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_blocked() {
    let server = Server::fixed(Reply::text("internal")).await;
    let p = server.port;
    let resolver = MapResolver::new(&[
        ("internal.test", &["127.0.0.1"]),
        ("mixed.test", &["93.184.216.34", "127.0.0.1"]),
        ("metadata.test", &["169.254.169.254"]),
    ]);
    let hosts = [
        format!("internal.test:{p}"),
        format!("mixed.test:{p}"),
        format!("metadata.test:{p}"),
    ];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &[], &hosts), resolver.clone());
    for (name, range) in [
        ("internal.test", "loopback"),
        ("mixed.test", "loopback"),
        ("metadata.test", "link-local"),
    ] {
        assert_blocked(
            get(&egress, &format!("http://{name}:{p}/")).await,
            range,
            name,
        );
    }
    assert_eq!(resolver.calls(), 3);
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn localhost_through_the_system_resolver_is_blocked() {
    let server = Server::fixed(Reply::text("internal")).await;
    let entry = format!("localhost:{}", server.port);
    let egress = Egress::new(config(&[&entry], &[], &[&entry])).unwrap();
    let result = get(&egress, &format!("http://localhost:{}/", server.port)).await;
    assert_blocked(result, "loopback", "localhost");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn dns_rebinding_cannot_swap_in_a_private_address() {
    let server = Server::fixed(Reply::text("internal")).await;
    let entry = format!("rebind.test:{}", server.port);
    // Answers a public address first, loopback afterwards. A client that resolves again
    // to connect would reach the local server.
    let resolver = RebindResolver::new("93.184.216.34", "127.0.0.1");
    let egress = egress(config(&[&entry], &[], &[&entry]), resolver.clone());
    let url = format!("http://rebind.test:{}/", server.port);

    let first = get(&egress, &url).await;
    assert!(
        matches!(first, Err(EgressError::Connect(_) | EgressError::Timeout)),
        "{first:?}"
    );
    assert_eq!(resolver.calls(), 1, "one resolution for one hop");
    assert_eq!(server.connections(), 0);

    let second = get(&egress, &url).await;
    assert_blocked(second, "loopback", "second request");
    assert_eq!(resolver.calls(), 2);
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn rebinding_on_a_redirect_hop_is_resolved_once() {
    let target = Server::fixed(Reply::text("internal")).await;
    let tp = target.port;
    let start = Server::fixed(Reply::redirect(302, &format!("http://rebind.test:{tp}/"))).await;
    let sp = start.port;
    let resolver = RebindResolver::new("93.184.216.34", "127.0.0.1");
    let start_entry = format!("127.0.0.1:{sp}");
    let target_entry = format!("rebind.test:{tp}");
    let egress = egress(
        config(
            &[&start_entry, &target_entry],
            &[&start_entry],
            &[&start_entry, &target_entry],
        ),
        resolver.clone(),
    );
    let result = get(&egress, &format!("http://127.0.0.1:{sp}/")).await;
    assert!(
        matches!(result, Err(EgressError::Connect(_) | EgressError::Timeout)),
        "{result:?}"
    );
    assert_eq!(start.requests().len(), 1);
    assert_eq!(resolver.calls(), 1);
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn redirects_into_private_space_are_refused() {
    let target = Server::fixed(Reply::text("internal")).await;
    let tp = target.port;
    let start = Server::start(move |req| {
        let location = match req.target.as_str() {
            "/to-port" => format!("http://127.0.0.1:{tp}/"),
            "/to-name" => format!("http://internal.test:{tp}/"),
            "/to-metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
            "/to-decimal" => format!("http://2130706433:{tp}/"),
            "/to-mapped" => format!("http://[::ffff:127.0.0.1]:{tp}/"),
            _ => return Reply::text("start"),
        };
        Reply::redirect(302, &location)
    })
    .await;
    let sp = start.port;
    let resolver = MapResolver::new(&[("internal.test", &["127.0.0.1"])]);
    let start_entry = format!("127.0.0.1:{sp}");
    // Every target is on allow_hosts and allow_http, so only the address check refuses.
    let targets = [
        start_entry.clone(),
        format!("127.0.0.1:{tp}"),
        format!("internal.test:{tp}"),
        "169.254.169.254".to_string(),
        format!("[::ffff:127.0.0.1]:{tp}"),
    ];
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let egress = egress(config(&targets, &[&start_entry], &targets), resolver);

    let ok = get(&egress, &format!("http://127.0.0.1:{sp}/"))
        .await
        .unwrap();
    assert_eq!(ok.text, "start");
    for (path, range) in [
        ("/to-port", "loopback"),
        ("/to-name", "loopback"),
        ("/to-metadata", "link-local"),
        ("/to-decimal", "loopback"),
        ("/to-mapped", "ipv4-mapped"),
    ] {
        let result = get(&egress, &format!("http://127.0.0.1:{sp}{path}")).await;
        assert_blocked(result, range, path);
    }
    assert_eq!(start.requests().len(), 6);
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn allow_private_opens_only_the_listed_port() {
    let listed = Server::fixed(Reply::text("listed")).await;
    let other = Server::fixed(Reply::text("other")).await;
    let entry = format!("127.0.0.1:{}", listed.port);
    let egress = egress(
        config(&["127.0.0.1"], &[&entry], &["127.0.0.1"]),
        no_names(),
    );
    let ok = get(&egress, &format!("http://127.0.0.1:{}/", listed.port))
        .await
        .unwrap();
    assert_eq!(ok.text, "listed");
    let refused = get(&egress, &format!("http://127.0.0.1:{}/", other.port)).await;
    assert_blocked(refused, "loopback", "unlisted port");
    assert_eq!(other.connections(), 0);
}

#[tokio::test]
async fn deny_ranges_win_over_allow_private() {
    let server = Server::fixed(Reply::text("internal")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.deny_ranges = strings(&["127.0.0.0/24"]);
    let egress = egress(cfg, no_names());
    let result = get(&egress, &format!("http://127.0.0.1:{}/", server.port)).await;
    assert_blocked(result, "denied range 127.0.0.0/24", "deny_ranges");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn redirect_count_is_capped() {
    let server = Server::start(|req| {
        let n: u32 = req
            .target
            .strip_prefix("/hop/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if req.target == "/loop" {
            Reply::redirect(302, "/loop")
        } else if n > 0 {
            Reply::redirect(301, &format!("/hop/{}", n - 1))
        } else {
            Reply::text("arrived")
        }
    })
    .await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.max_redirects = 3;
    let egress = egress(cfg, no_names());

    let ok = get(&egress, &format!("http://127.0.0.1:{}/hop/3", server.port))
        .await
        .unwrap();
    assert_eq!(ok.text, "arrived");
    assert_eq!(ok.redirects.len(), 3);
    assert!(ok.final_url.ends_with("/hop/0"), "{}", ok.final_url);

    let before = server.requests().len();
    let result = get(&egress, &format!("http://127.0.0.1:{}/loop", server.port)).await;
    assert_eq!(result.unwrap_err(), EgressError::TooManyRedirects(3));
    assert_eq!(server.requests().len() - before, 4);
}

// ---------------------------------------------------------------------------------------
// Allowlists

#[tokio::test]
async fn an_allowed_local_server_answers() {
    let server = Server::fixed(Reply::text("hello")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let url = format!("http://127.0.0.1:{}/path?q=1", server.port);

    let checked = egress.check_url(&url, &Scope::default()).await.unwrap();
    assert_eq!(checked.addrs(), vec![support::local(server.port)]);
    assert!(checked.private_allowed());
    assert_eq!(checked.url(), url);

    let response = get(&egress, &url).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text, "hello");
    assert_eq!(response.bytes, 5);
    assert!(!response.truncated);
    assert_eq!(response.final_url, url);
    assert_eq!(
        response.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let request = &server.requests()[0];
    assert_eq!(request.target, "/path?q=1");
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("carapace/")
    );
}

#[tokio::test]
async fn plain_http_needs_allow_http() {
    let server = Server::fixed(Reply::text("hello")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[]), no_names());
    let result = get(&egress, &format!("http://127.0.0.1:{}/", server.port)).await;
    assert!(
        matches!(&result, Err(EgressError::SchemeNotAllowed { scheme, .. }) if scheme == "http"),
        "{result:?}"
    );
    for url in [
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
    ] {
        let result = get(&egress, url).await;
        assert!(
            matches!(&result, Err(EgressError::SchemeNotAllowed { .. })),
            "{url}: {result:?}"
        );
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn hosts_off_the_list_are_refused_before_resolution() {
    let resolver = MapResolver::new(&[("evil.test", &["127.0.0.1"]), ("api.test", &["127.0.0.1"])]);
    let egress = egress(config(&["api.test:443"], &[], &[]), resolver.clone());
    for url in [
        "https://evil.test/",
        "https://api.test.evil.test/",
        "https://api.test:8443/",
        "http://[::1]/",
        "https://user:pw@api.test/",
    ] {
        let result = get(&egress, url).await;
        assert!(
            matches!(
                result,
                Err(EgressError::HostNotAllowed { .. } | EgressError::InvalidUrl(_))
            ),
            "{url}: {result:?}"
        );
    }
    assert_eq!(
        get(&egress, "https://evil.test/").await.unwrap_err(),
        EgressError::HostNotAllowed {
            host: "evil.test:443".to_string()
        }
    );
    assert_eq!(resolver.calls(), 0);
}

#[tokio::test]
async fn scope_narrows_and_never_widens() {
    let server = Server::fixed(Reply::text("hello")).await;
    let p = server.port;
    let resolver = MapResolver::new(&[
        ("a.test", &["127.0.0.1"]),
        ("b.test", &["127.0.0.1"]),
        ("c.test", &["127.0.0.1"]),
    ]);
    let hosts = [format!("a.test:{p}"), format!("b.test:{p}")];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), resolver.clone());

    let narrow = Scope {
        allow_hosts: Some(strings(&["a.test"])),
        ..Scope::default()
    };
    let ok = egress
        .send(EgressRequest::get(format!("http://a.test:{p}/")), &narrow)
        .await
        .unwrap();
    assert_eq!(ok.text, "hello");
    let refused = egress
        .send(EgressRequest::get(format!("http://b.test:{p}/")), &narrow)
        .await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );
    let wider = Scope {
        allow_hosts: Some(strings(&["c.test"])),
        ..Scope::default()
    };
    let refused = egress
        .send(EgressRequest::get(format!("http://c.test:{p}/")), &wider)
        .await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );
    let nothing = Scope {
        allow_hosts: Some(Vec::new()),
        ..Scope::default()
    };
    let refused = egress
        .check_url(&format!("http://a.test:{p}/"), &nothing)
        .await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );
    assert_eq!(resolver.calls(), 1);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_session_list_narrows_with_the_tool_list_also_across_redirects() {
    let target = Server::fixed(Reply::text("b content")).await;
    let tp = target.port;
    let start = Server::fixed(Reply::redirect(302, &format!("http://b.test:{tp}/"))).await;
    let sp = start.port;
    let resolver = MapResolver::new(&[("a.test", &["127.0.0.1"]), ("b.test", &["127.0.0.1"])]);
    let hosts = [format!("a.test:{sp}"), format!("b.test:{tp}")];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), resolver);

    // The tool may reach both; the session only a.test: the redirect to b.test is refused.
    let session = Scope {
        allow_hosts: Some(strings(&["a.test", "b.test"])),
        session_hosts: Some(strings(&["a.test"])),
        ..Scope::default()
    };
    let refused = egress
        .send(EgressRequest::get(format!("http://a.test:{sp}/")), &session)
        .await;
    assert!(
        matches!(&refused, Err(EgressError::HostNotAllowed { host }) if host.starts_with("b.test")),
        "{refused:?}"
    );
    assert_eq!(target.connections(), 0);

    // A session list cannot widen the tool's: b.test is on the session's list only.
    let wider = Scope {
        allow_hosts: Some(strings(&["a.test"])),
        session_hosts: Some(strings(&["a.test", "b.test"])),
        ..Scope::default()
    };
    let refused = egress
        .check_url(&format!("http://b.test:{tp}/"), &wider)
        .await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );

    // Both lists allow b.test: it is reached.
    let both = Scope {
        session_hosts: Some(strings(&["*.test"])),
        ..Scope::default()
    };
    let ok = egress
        .send(EgressRequest::get(format!("http://a.test:{sp}/")), &both)
        .await
        .unwrap();
    assert_eq!(ok.text, "b content");
}

#[tokio::test]
async fn wildcard_entries_match_subdomains() {
    let server = Server::fixed(Reply::text("hello")).await;
    let p = server.port;
    let resolver = MapResolver::new(&[
        ("api.example.test", &["127.0.0.1"]),
        ("example.test", &["127.0.0.1"]),
    ]);
    let entry = format!("*.example.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), resolver);
    assert_eq!(
        get(&egress, &format!("http://api.example.test:{p}/"))
            .await
            .unwrap()
            .text,
        "hello"
    );
    let refused = get(&egress, &format!("http://example.test:{p}/")).await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    for cfg in [
        config(&["*"], &[], &[]),
        config(&["a.test"], &["a.test"], &[]),
        config(&["a.test:x"], &[], &[]),
        EgressConfig {
            deny_ranges: strings(&["10.0.0.0/99"]),
            ..EgressConfig::default()
        },
        EgressConfig {
            timeout: Duration::ZERO,
            ..EgressConfig::default()
        },
    ] {
        let result = Egress::with_resolver(cfg, no_names());
        assert!(
            matches!(result, Err(EgressError::Config(_))),
            "expected a config error"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Headers and methods

#[tokio::test]
async fn framing_and_proxy_headers_are_refused() {
    let server = Server::fixed(Reply::text("hello")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let url = format!("http://127.0.0.1:{}/", server.port);
    for (name, value) in [
        ("Host", "internal.example"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Ok", "line\r\nInjected: yes"),
        ("Bad Name", "x"),
    ] {
        let req = EgressRequest {
            headers: vec![(name.to_string(), value.to_string())],
            ..EgressRequest::get(url.clone())
        };
        let result = egress.send(req, &Scope::default()).await;
        assert!(
            matches!(&result, Err(EgressError::BadHeader(_))),
            "{name}: {result:?}"
        );
    }
    let many = EgressRequest {
        headers: (0..100)
            .map(|i| (format!("x-{i}"), "v".to_string()))
            .collect(),
        ..EgressRequest::get(url.clone())
    };
    assert!(matches!(
        egress.send(many, &Scope::default()).await,
        Err(EgressError::BadHeader(_))
    ));
    let big = EgressRequest {
        method: "POST".to_string(),
        body: Some(vec![b'x'; 2 * 1024 * 1024]),
        ..EgressRequest::get(url.clone())
    };
    assert_eq!(
        egress.send(big, &Scope::default()).await.unwrap_err(),
        EgressError::TooLarge
    );
    let connect = EgressRequest {
        method: "CONNECT".to_string(),
        ..EgressRequest::get(url.clone())
    };
    assert!(matches!(
        egress.send(connect, &Scope::default()).await,
        Err(EgressError::BadMethod(_))
    ));
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn redirects_rewrite_methods_like_browsers() {
    let server = Server::start(|req| match req.target.as_str() {
        "/see-other" => Reply::redirect(303, "/done"),
        "/found" => Reply::redirect(302, "/done"),
        "/temporary" => Reply::redirect(307, "/done"),
        _ => Reply::text(format!(
            "{} {}",
            req.method,
            String::from_utf8_lossy(&req.body)
        )),
    })
    .await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    for (path, expected) in [
        ("/see-other", "GET "),
        ("/found", "GET "),
        ("/temporary", "POST payload"),
    ] {
        let req = EgressRequest {
            method: "POST".to_string(),
            url: format!("http://127.0.0.1:{}{path}", server.port),
            headers: vec![("Content-Type".to_string(), "text/plain".to_string())],
            body: Some(b"payload".to_vec()),
        };
        let response = egress.send(req, &Scope::default()).await.unwrap();
        assert_eq!(response.text, expected, "{path}");
    }
    let done: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.target == "/done")
        .collect();
    assert_eq!(done[0].header("content-type"), None);
    assert_eq!(done[2].header("content-type"), Some("text/plain"));
}

// ---------------------------------------------------------------------------------------
// Credential injection

#[tokio::test]
async fn injected_header_stays_with_its_host_across_redirects() {
    let other = Server::fixed(Reply::text("landed")).await;
    let op = other.port;
    let api = Server::fixed(Reply::redirect(
        302,
        &format!("http://other.test:{op}/landing"),
    ))
    .await;
    let ap = api.port;
    let resolver =
        MapResolver::new(&[("api.test", &["127.0.0.1"]), ("other.test", &["127.0.0.1"])]);
    let hosts = [format!("api.test:{ap}"), format!("other.test:{op}")];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![header_injection(&["api.test"])],
    };
    let req = EgressRequest {
        method: "POST".to_string(),
        url: format!("http://api.test:{ap}/start"),
        headers: vec![
            ("Cookie".to_string(), "session=caller".to_string()),
            ("X-Custom".to_string(), "kept".to_string()),
        ],
        body: Some(b"{}".to_vec()),
    };
    let response = egress.send(req, &scope).await.unwrap();
    assert_eq!(response.text, "landed");
    assert_eq!(
        response.redirects,
        vec![format!("http://other.test:{op}/landing")]
    );

    let first = &api.requests()[0];
    assert_eq!(
        first.header("authorization"),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(first.header("cookie"), Some("session=caller"));
    let second = &other.requests()[0];
    assert_eq!(second.method, "GET");
    assert_eq!(second.header("authorization"), None);
    assert_eq!(second.header("cookie"), None);
    assert_eq!(second.header("x-custom"), Some("kept"));
    assert!(
        !second.headers.iter().any(|(_, v)| v.contains(SECRET)),
        "{:?}",
        second.headers
    );
}

#[tokio::test]
async fn caller_authorization_is_dropped_on_a_cross_host_redirect() {
    let other = Server::fixed(Reply::text("landed")).await;
    let op = other.port;
    let api = Server::fixed(Reply::redirect(307, &format!("http://127.0.0.1:{op}/"))).await;
    let ap = api.port;
    let hosts = [format!("127.0.0.1:{ap}"), format!("127.0.0.1:{op}")];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), no_names());
    let req = EgressRequest {
        headers: vec![("Authorization".to_string(), "Bearer caller".to_string())],
        ..EgressRequest::get(format!("http://127.0.0.1:{ap}/"))
    };
    egress.send(req, &Scope::default()).await.unwrap();
    assert_eq!(
        api.requests()[0].header("authorization"),
        Some("Bearer caller")
    );
    assert_eq!(other.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn a_reflected_credential_is_redacted() {
    let server = Server::start(|req| {
        let auth = req.header("authorization").unwrap_or("none").to_string();
        Reply::new(
            200,
            "application/json",
            format!("{{\"you_sent\":\"{auth}\"}}"),
        )
        .header("x-echo", &auth)
    })
    .await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![header_injection(&["api.test"])],
    };
    let response = egress
        .send(EgressRequest::get(format!("http://api.test:{p}/")), &scope)
        .await
        .unwrap();
    assert_eq!(response.text, "{\"you_sent\":\"Bearer [REDACTED]\"}");
    let echo = response
        .headers
        .iter()
        .find(|(n, _)| n == "x-echo")
        .unwrap();
    assert_eq!(echo.1, "Bearer [REDACTED]");
    assert!(!format!("{response:?}").contains(SECRET));
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(&*format!("Bearer {SECRET}"))
    );
}

#[tokio::test]
async fn query_injection_is_sent_and_redacted() {
    let server = Server::start(|req| {
        if req.target.starts_with("/start") {
            // Bounce the credential back through a same-host redirect.
            let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
            Reply::redirect(302, &format!("/echo?{query}"))
        } else {
            Reply::new(200, "text/html", format!("<p>target: {}</p>", req.target))
        }
    })
    .await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![Injection {
            hosts: strings(&["api.test"]),
            place: Place::Query {
                name: "key".to_string(),
            },
            value: Secret::new(SECRET.to_string()),
        }],
    };
    let response = egress
        .send(
            EgressRequest::get(format!("http://api.test:{p}/start?q=rust&key=caller")),
            &scope,
        )
        .await
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests[0].target, format!("/start?q=rust&key={SECRET}"));
    assert_eq!(requests[1].target, format!("/echo?q=rust&key={SECRET}"));
    let shown = format!("{response:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        response.text.contains("key=[REDACTED]"),
        "{}",
        response.text
    );
    assert_eq!(
        response.redirects,
        vec![format!("http://api.test:{p}/echo?q=rust&key=[REDACTED]")]
    );
    assert!(!response.final_url.contains(SECRET));
}

#[tokio::test]
async fn a_redirect_may_not_carry_a_credential_to_another_host() {
    let other = Server::fixed(Reply::text("got it")).await;
    let op = other.port;
    let api = Server::start(move |req| {
        let target = if req.target == "/host" {
            format!("http://{SECRET}.test:{op}/")
        } else {
            format!("http://other.test:{op}/?leak={SECRET}")
        };
        Reply::redirect(302, &target)
    })
    .await;
    let ap = api.port;
    let secret_host = format!("{SECRET}.test");
    let resolver = MapResolver::new(&[
        ("api.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
        (&secret_host, &["127.0.0.1"]),
    ]);
    let hosts = [
        format!("api.test:{ap}"),
        format!("other.test:{op}"),
        format!("{secret_host}:{op}"),
    ];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![header_injection(&["api.test"])],
    };
    for path in ["/query", "/host"] {
        let result = egress
            .send(
                EgressRequest::get(format!("http://api.test:{ap}{path}")),
                &scope,
            )
            .await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), "protocol_error", "{path}");
        assert!(!err.to_string().contains(SECRET), "{err}");
    }
    assert_eq!(other.connections(), 0);
}

// ---------------------------------------------------------------------------------------
// Limits and content

#[tokio::test]
async fn a_large_body_is_truncated() {
    let server = Server::fixed(Reply::text(vec![b'a'; 10_000])).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.max_response_bytes = 1000;
    let egress = egress(cfg, no_names());
    let response = get(&egress, &format!("http://127.0.0.1:{}/", server.port))
        .await
        .unwrap();
    assert!(response.truncated);
    assert_eq!(response.bytes, 1000);
    assert_eq!(response.text, "a".repeat(1000));
}

#[tokio::test]
async fn truncation_does_not_leave_part_of_a_credential() {
    let body = format!("token={SECRET}");
    let server = Server::fixed(Reply::text(body)).await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.max_response_bytes = "token=".len() as u64 + 8;
    let egress = egress(cfg, resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![header_injection(&["api.test"])],
    };
    let response = egress
        .send(EgressRequest::get(format!("http://api.test:{p}/")), &scope)
        .await
        .unwrap();
    assert!(response.truncated);
    assert_eq!(response.text, "token=");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let mut reply = Reply::text("late");
    reply.delay = Duration::from_secs(5);
    let server = Server::fixed(reply).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.timeout = Duration::from_millis(300);
    let egress = egress(cfg, no_names());
    let started = std::time::Instant::now();
    let result = get(&egress, &format!("http://127.0.0.1:{}/", server.port)).await;
    assert_eq!(result.unwrap_err(), EgressError::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn html_becomes_readable_text() {
    let html = "<!doctype html><html><head><title>t</title><style>body{color:red}</style>\
        </head><body><h1>Release notes</h1><p>Version <b>2.0</b> is out, see \
        <a href=\"https://example.com/changelog\">the changelog</a>.</p>\
        <script>alert(1)</script></body></html>";
    let server = Server::fixed(Reply::new(200, "text/html; charset=utf-8", html)).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let response = get(&egress, &format!("http://127.0.0.1:{}/", server.port))
        .await
        .unwrap();
    assert_eq!(
        response.text,
        "# Release notes\n\nVersion **2.0** is out, see [the changelog][1].\n\n\
         [1]: https://example.com/changelog\n"
    );
}

#[tokio::test]
async fn binary_content_is_summarised() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let server = Server::start(move |req| match req.target.as_str() {
        "/untyped" => Reply {
            headers: Vec::new(),
            ..Reply::text(png.clone())
        },
        _ => Reply::new(200, "image/png", png.clone()),
    })
    .await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let typed = get(&egress, &format!("http://127.0.0.1:{}/", server.port))
        .await
        .unwrap();
    assert_eq!(typed.text, "binary content, image/png, 16 bytes");
    assert_eq!(typed.bytes, 16);
    let untyped = get(
        &egress,
        &format!("http://127.0.0.1:{}/untyped", server.port),
    )
    .await
    .unwrap();
    assert_eq!(untyped.text, "binary content, unknown type, 16 bytes");
}

/// The child half of `environment_proxy_is_ignored`: runs only when the parent set
/// CARAPACE_EGRESS_PROXY_CHILD (tests cannot set environment variables in-process
/// without `unsafe`).
#[tokio::test]
async fn proxy_child() {
    let Ok(port) = std::env::var("CARAPACE_EGRESS_PROXY_CHILD") else {
        return;
    };
    let entry = format!("127.0.0.1:{port}");
    let egress = Egress::new(config(&[&entry], &[&entry], &[&entry])).unwrap();
    let response = get(&egress, &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(response.text, "direct");
}

#[tokio::test]
async fn environment_proxy_is_ignored() {
    let proxy = Server::fixed(Reply::text("via proxy")).await;
    let target = Server::fixed(Reply::text("direct")).await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", "proxy_child", "--nocapture", "--test-threads=1"])
        .env("CARAPACE_EGRESS_PROXY_CHILD", target.port.to_string())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        child.env(var, &proxy_url);
    }
    let output = child.output().await.unwrap();
    assert!(
        output.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child test did not run"
    );
    assert_eq!(proxy.connections(), 0);
    assert_eq!(target.connections(), 1);
}

#[tokio::test]
async fn https_connects_to_the_pinned_address() {
    // A plain-HTTP listener: the TLS handshake stalls until the connect timeout, but the
    // connection shows that an https request to a name goes to the checked address.
    let server = Server::fixed(Reply::text("not tls")).await;
    let p = server.port;
    let resolver = MapResolver::new(&[("secure.test", &["127.0.0.1"])]);
    let entry = format!("secure.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[]), resolver.clone());
    let result = get(&egress, &format!("https://secure.test:{p}/")).await;
    assert!(
        matches!(
            result,
            Err(EgressError::Connect(_) | EgressError::Protocol(_) | EgressError::Timeout)
        ),
        "{result:?}"
    );
    assert_eq!(resolver.calls(), 1);
    assert_eq!(server.connections(), 1);
}

#[test]
fn the_client_can_be_shared_across_tasks() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send>(_: &T) {}
    shared::<Egress>();
    let egress = Egress::new(EgressConfig::default()).unwrap();
    let scope = Scope::default();
    sendable(&egress.send(EgressRequest::get("https://example.com/"), &scope));
    sendable(&egress.check_url("https://example.com/", &scope));
}

#[tokio::test]
async fn a_body_is_never_re_sent_to_another_host_by_a_redirect() {
    let target = Server::fixed(Reply::text("collected")).await;
    let tp = target.port;
    let start = Server::start(move |req| match req.target.as_str() {
        "/same" => Reply::redirect(307, "/done"),
        "/done" => Reply::text(format!(
            "{} {}",
            req.method,
            String::from_utf8_lossy(&req.body)
        )),
        _ => Reply::redirect(308, &format!("http://b.test:{tp}/collect")),
    })
    .await;
    let sp = start.port;
    let resolver = MapResolver::new(&[("a.test", &["127.0.0.1"]), ("b.test", &["127.0.0.1"])]);
    let hosts = [format!("a.test:{sp}"), format!("b.test:{tp}")];
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let egress = egress(config(&hosts, &hosts, &hosts), resolver);
    let post = |path: &str| EgressRequest {
        method: "POST".to_string(),
        url: format!("http://a.test:{sp}{path}"),
        headers: Vec::new(),
        body: Some(b"the workspace".to_vec()),
    };
    // The caller checked a.test; b.test would get the body: refused, nothing sent there.
    let refused = egress.send(post("/elsewhere"), &Scope::default()).await;
    assert!(
        matches!(&refused, Err(EgressError::Protocol(m)) if m.contains("another host (b.test)")),
        "{refused:?}"
    );
    assert_eq!(target.connections(), 0);
    // On the same host the redirect is followed with its body.
    let same = egress.send(post("/same"), &Scope::default()).await.unwrap();
    assert_eq!(same.text, "POST the workspace");
}

// ---------------------------------------------------------------------------------------
// send_raw: for protocol clients (MCP over HTTP)

#[tokio::test]
async fn send_raw_keeps_the_body_as_sent_and_redacts_credentials() {
    let page = "<html><body><p>not rendered</p></body></html>";
    let server = Server::start(move |req| {
        let auth = req.header("authorization").unwrap_or("none").to_string();
        match req.target.as_str() {
            "/page" => Reply::new(200, "text/html", page),
            "/binary" => Reply::new(200, "application/octet-stream", "raw\u{1}bytes"),
            _ => Reply::new(
                200,
                "text/event-stream",
                format!("event: message\ndata: {{\"echo\":\"{auth}\"}}\n\n"),
            ),
        }
    })
    .await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), resolver);
    let scope = Scope {
        allow_hosts: None,
        session_hosts: None,
        injections: vec![header_injection(&["api.test"])],
    };
    let raw = |path: &str| EgressRequest::get(format!("http://api.test:{p}{path}"));

    let sse = egress.send_raw(raw("/mcp"), &scope).await.unwrap();
    assert_eq!(
        sse.text,
        "event: message\ndata: {\"echo\":\"Bearer [REDACTED]\"}\n\n"
    );
    assert!(!format!("{sse:?}").contains(SECRET));
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(&*format!("Bearer {SECRET}"))
    );
    let html = egress.send_raw(raw("/page"), &scope).await.unwrap();
    assert_eq!(html.text, page);
    let binary = egress.send_raw(raw("/binary"), &scope).await.unwrap();
    assert_eq!(binary.text, "raw\u{1}bytes");
}

#[tokio::test]
async fn send_raw_returns_a_redirect_without_following_it() {
    let target = Server::fixed(Reply::text("followed")).await;
    let start = Server::fixed(Reply::redirect(
        307,
        &format!("http://127.0.0.1:{}/", target.port),
    ))
    .await;
    let (a, b) = (
        format!("127.0.0.1:{}", start.port),
        format!("127.0.0.1:{}", target.port),
    );
    let egress = egress(config(&[&a, &b], &[&a, &b], &[&a, &b]), no_names());
    let request = EgressRequest {
        method: "POST".to_string(),
        url: format!("http://{a}/mcp"),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: Some(b"{}".to_vec()),
    };
    let response = egress.send_raw(request, &Scope::default()).await.unwrap();
    assert_eq!(response.status, 307);
    assert!(response.redirects.is_empty());
    assert_eq!(start.requests()[0].body, b"{}");
    assert_eq!(target.connections(), 0, "the redirect was followed");
}

#[tokio::test]
async fn send_raw_checks_like_send() {
    let server = Server::fixed(Reply::text("internal")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let url = format!("http://{entry}/mcp");
    let not_listed = egress(config(&["example.com"], &[], &[]), no_names());
    let result = not_listed
        .send_raw(EgressRequest::get(&url), &Scope::default())
        .await;
    assert!(matches!(result, Err(EgressError::HostNotAllowed { .. })));
    let not_private = egress(config(&[&entry], &[], &[&entry]), no_names());
    let result = not_private
        .send_raw(EgressRequest::get(&url), &Scope::default())
        .await;
    assert_blocked(result, "loopback", "send_raw to loopback");
    assert_eq!(server.connections(), 0);

    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.max_response_bytes = 3;
    let small = egress(cfg, no_names());
    let response = small
        .send_raw(EgressRequest::get(&url), &Scope::default())
        .await
        .unwrap();
    assert!(response.truncated);
    assert_eq!(response.text, "int");
}

// ---------------------------------------------------------------------------------------
// send_stream: bodies read as they arrive (MCP's server-sent events)

/// The next piece of `stream`, failing instead of hanging when none comes.
async fn next_piece(stream: &mut EgressStream) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a piece within 10 s")
        .map(|piece| piece.unwrap())
}

/// Pieces until they add up to at least `len` bytes.
async fn read_at_least(stream: &mut EgressStream, len: usize) -> String {
    let mut text = String::new();
    while text.len() < len {
        text += &next_piece(stream).await.expect("more of the body");
    }
    text
}

/// The rest of the body.
async fn read_rest(stream: &mut EgressStream) -> String {
    let mut text = String::new();
    while let Some(piece) = next_piece(stream).await {
        text += &piece;
    }
    text
}

#[tokio::test]
async fn send_stream_checks_before_connecting() {
    let server = Server::fixed(Reply::text("internal")).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let url = format!("http://{entry}/mcp");
    let not_listed = egress(config(&["example.com"], &[], &[]), no_names());
    let result = not_listed
        .send_stream(EgressRequest::get(&url), &Scope::default())
        .await;
    assert!(
        matches!(result, Err(EgressError::HostNotAllowed { .. })),
        "{result:?}"
    );
    let allowed = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let narrowed = Scope {
        allow_hosts: Some(strings(&["api.example.com"])),
        ..Scope::default()
    };
    let result = allowed
        .send_stream(EgressRequest::get(&url), &narrowed)
        .await;
    assert!(
        matches!(result, Err(EgressError::HostNotAllowed { .. })),
        "{result:?}"
    );
    let not_private = egress(config(&[&entry], &[], &[&entry]), no_names());
    let result = not_private
        .send_stream(EgressRequest::get(&url), &Scope::default())
        .await;
    assert_blocked(result, "loopback", "send_stream to loopback");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn send_stream_returns_a_redirect_without_following_it() {
    let target = Server::fixed(Reply::text("followed")).await;
    let location = format!("http://127.0.0.1:{}/", target.port);
    let start = Server::fixed(Reply::redirect(307, &location)).await;
    let (a, b) = (
        format!("127.0.0.1:{}", start.port),
        format!("127.0.0.1:{}", target.port),
    );
    let egress = egress(config(&[&a, &b], &[&a, &b], &[&a, &b]), no_names());
    let request = EgressRequest {
        method: "POST".to_string(),
        url: format!("http://{a}/mcp"),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: Some(b"{}".to_vec()),
    };
    let mut stream = egress
        .send_stream(request, &Scope::default())
        .await
        .unwrap();
    assert_eq!(stream.status(), 307);
    assert_eq!(stream.header("Location"), Some(location.as_str()));
    assert_eq!(read_rest(&mut stream).await, "");
    assert_eq!(start.requests()[0].body, b"{}");
    assert_eq!(target.connections(), 0, "the redirect was followed");
}

#[tokio::test]
async fn send_stream_hands_pieces_over_before_the_body_ends() {
    let gate = Arc::new(Semaphore::new(0));
    let reply = Reply::new(200, "text/event-stream", "data: one\n\n")
        .then(&["data: two\n\n", "data: three\n\n"], &gate);
    let server = Server::fixed(reply).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), no_names());
    let mut stream = egress
        .send_stream(
            EgressRequest::get(format!("http://{entry}/mcp")),
            &Scope::default(),
        )
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.content_type(), Some("text/event-stream"));
    // The server sends nothing more until the gate opens: this piece came first.
    assert_eq!(read_at_least(&mut stream, 11).await, "data: one\n\n");
    gate.add_permits(1);
    assert_eq!(read_at_least(&mut stream, 11).await, "data: two\n\n");
    gate.add_permits(1);
    assert_eq!(read_rest(&mut stream).await, "data: three\n\n");
}

#[tokio::test]
async fn a_streamed_body_has_no_deadline_but_its_head_has() {
    let gate = Arc::new(Semaphore::new(0));
    let server = Server::fixed(Reply::text("first ").then(&["second"], &gate)).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.timeout = Duration::from_millis(300);
    let egress = egress(cfg.clone(), no_names());
    let url = format!("http://{entry}/");
    let mut stream = egress
        .send_stream(EgressRequest::get(&url), &Scope::default())
        .await
        .unwrap();
    assert_eq!(read_at_least(&mut stream, 6).await, "first ");
    // Well past the request timeout, the body goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.add_permits(1);
    assert_eq!(read_rest(&mut stream).await, "second");

    let mut late = Reply::text("late");
    late.delay = Duration::from_secs(5);
    let slow = Server::fixed(late).await;
    let entry = format!("127.0.0.1:{}", slow.port);
    let mut cfg = config(&[&entry], &[&entry], &[&entry]);
    cfg.timeout = Duration::from_millis(300);
    let egress = self::egress(cfg, no_names());
    let result = egress
        .send_stream(
            EgressRequest::get(format!("http://{entry}/")),
            &Scope::default(),
        )
        .await;
    assert_eq!(result.unwrap_err(), EgressError::Timeout);
}

#[tokio::test]
async fn a_credential_split_across_pieces_is_redacted() {
    let gate = Arc::new(Semaphore::new(0));
    let handler_gate = Arc::clone(&gate);
    let server = Server::start(move |req| {
        let auth = req.header("authorization").unwrap_or("none").to_string();
        // The reflected credential is cut in two: the second half waits for the gate.
        let (first, second) = auth.split_at(auth.len() - 6);
        Reply::new(200, "text/event-stream", format!("data: {first}"))
            .header("x-echo", &auth)
            .then(&[&format!("{second} done\n\n")], &handler_gate)
    })
    .await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let egress = egress(config(&[&entry], &[&entry], &[&entry]), resolver);
    let scope = Scope {
        injections: vec![header_injection(&["api.test"])],
        ..Scope::default()
    };
    let mut stream = egress
        .send_stream(
            EgressRequest::get(format!("http://api.test:{p}/mcp")),
            &scope,
        )
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(stream.header("x-echo"), Some("Bearer [REDACTED]"));
    // Everything before the first half of the credential comes at once; the half waits.
    let before = "data: Bearer ";
    assert_eq!(read_at_least(&mut stream, before.len()).await, before);
    gate.add_permits(1);
    assert_eq!(read_rest(&mut stream).await, "[REDACTED] done\n\n");
    assert!(!format!("{stream:?}").contains(SECRET));
}

#[tokio::test]
async fn into_response_reads_the_rest_like_send_raw() {
    let body = format!("{{\"token\":\"{SECRET}\",\"pad\":\"{}\"}}", "x".repeat(100));
    let server = Server::fixed(Reply::new(200, "application/json", body.clone())).await;
    let p = server.port;
    let resolver = MapResolver::new(&[("api.test", &["127.0.0.1"])]);
    let entry = format!("api.test:{p}");
    let scope = Scope {
        injections: vec![header_injection(&["api.test"])],
        ..Scope::default()
    };
    let url = format!("http://api.test:{p}/mcp");
    for max in [10_000, 30, 12] {
        let mut cfg = config(&[&entry], &[&entry], &[&entry]);
        cfg.max_response_bytes = max;
        let egress = egress(cfg, resolver.clone());
        let raw = egress
            .send_raw(EgressRequest::get(&url), &scope)
            .await
            .unwrap();
        let streamed = egress
            .send_stream(EgressRequest::get(&url), &scope)
            .await
            .unwrap()
            .into_response()
            .await
            .unwrap();
        assert_eq!(streamed, raw, "max {max}");
        assert!(!streamed.text.contains(SECRET), "max {max}");
    }
}

// ---------------------------------------------------------------------------------------
// Tunnels (HTTP CONNECT of a sandboxed MCP server)

#[tokio::test]
async fn a_tunnel_reaches_only_web_ports_unless_an_entry_names_the_port() {
    let resolver = MapResolver::new(&[
        ("api.example.com", &["93.184.216.34"]),
        ("db.example.com", &["93.184.216.35"]),
        ("plain.example.com", &["93.184.216.36"]),
    ]);
    let egress = egress(
        config(
            &[
                "api.example.com",
                "db.example.com:5432",
                "plain.example.com",
            ],
            &[],
            &["plain.example.com"],
        ),
        resolver,
    );
    let none = Scope::default();
    let ok = egress
        .check_tunnel("api.example.com:443", &none)
        .await
        .unwrap();
    assert_eq!(ok.addrs(), vec!["93.184.216.34:443".parse().unwrap()]);
    // An entry without a port is web traffic: not SSH, SMTP or any other service.
    for dest in [
        "api.example.com:22",
        "api.example.com:25",
        "api.example.com:8443",
    ] {
        let refused = egress.check_tunnel(dest, &none).await;
        assert!(
            matches!(refused, Err(EgressError::PortNotNamed { .. })),
            "{dest}: {refused:?}"
        );
    }
    // Port 80 is plain http: only where allow_http lists the host.
    let refused = egress.check_tunnel("api.example.com:80", &none).await;
    assert!(
        matches!(refused, Err(EgressError::SchemeNotAllowed { .. })),
        "{refused:?}"
    );
    let plain = egress.check_tunnel("plain.example.com:80", &none).await;
    assert_eq!(plain.unwrap().port(), 80);
    // A port named by the entry, in the configuration or in the server's own list.
    let db = egress.check_tunnel("db.example.com:5432", &none).await;
    assert_eq!(db.unwrap().port(), 5432);
    let own = Scope {
        allow_hosts: Some(strings(&["api.example.com:8443"])),
        ..Scope::default()
    };
    let named = egress.check_tunnel("api.example.com:8443", &own).await;
    assert_eq!(named.unwrap().port(), 8443);
    // The server's list still narrows: a host it does not name is refused.
    let refused = egress.check_tunnel("db.example.com:5432", &own).await;
    assert!(
        matches!(refused, Err(EgressError::HostNotAllowed { .. })),
        "{refused:?}"
    );
}
