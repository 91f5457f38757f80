//! `cara serve`: wires store, Gate, agent and server, and runs until a signal.

use std::fs::File;
use std::sync::Arc;

use anyhow::{Context, bail};
use carapace_agent::{Agent, AgentConfig, SYSTEM_PROMPT};
use carapace_gate::{Egress, ExecSetup, Gate, GateDeps, NetSetup, Scrubber, SharedScrubber};
use carapace_llm::{Route, Router as ModelChain};
use carapace_server::{AppState, ServerDeps, router};
use carapace_store::{AuditKey, Store};
use serde_json::json;
use sha2::Digest as _;

use crate::config::{self, ProviderSetup};
use crate::datadir::{DataDir, write_atomic};
use crate::vault_cmd::VaultSource;

pub async fn serve(dd: &DataDir, bind: Option<String>) -> anyhow::Result<()> {
    dd.prepare()?;
    init_logging();
    // One daemon per data directory: the lock is held for the life of the process and
    // released by the kernel however it ends.
    let lock_path = dd.root().join("daemon.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another cara daemon is already running for {}; `cara status` shows it",
            dd.root().display()
        );
    }

    let file = config::load(&dd.config())?;
    // Secrets: every value the vault holds joins the scrubber before anything runs.
    let scrubber = SharedScrubber::new(Scrubber::new(&[]));
    let vault = VaultSource::open(dd, &file, scrubber.clone());
    let preloaded = vault.preload();
    let dead_letter_key = match vault.dead_letter_key(dd) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("blocked messages will not be kept: {e:#}");
            None
        }
    };
    let key_vars: Vec<String> = config::providers::key_variables()
        .map(String::from)
        .chain(
            file.providers
                .values()
                .filter_map(|t| t.api_key_env.as_ref().map(|v| v.get_ref().clone())),
        )
        .collect();
    let env = |k: &str| {
        if k == "CARAPACE_BIND"
            && let Some(b) = &bind
        {
            return Some(b.clone());
        }
        // A provider key imported into the vault (`cara vault import-env`, or an entry
        // named like a `[providers] api_key_env`) stands in for the variable.
        std::env::var(k).ok().filter(|v| !v.is_empty()).or_else(|| {
            key_vars
                .iter()
                .any(|v| v == k)
                .then(|| vault.file_value(k).map(|v| v.expose().clone()))
                .flatten()
        })
    };
    let settings = config::settings(&dd.config(), &file, &env)?;
    // What model resolution reads, once: a session switched to another model (`/model`)
    // resolves against the same settings.
    let provider_env: std::collections::BTreeMap<String, String> =
        config::providers::variables(&file.providers)
            .into_iter()
            .filter_map(|k| env(&k).map(|v| (k, v)))
            .collect();

    let store = Arc::new(
        Store::open_exclusive(&dd.db())
            .with_context(|| format!("cannot open {}", dd.db().display()))?,
    );
    let audit_key = Arc::new(AuditKey::load_or_create(&dd.audit_key())?);
    let token = dd.read_token()?;
    let mut secrets = vec![token.clone()];
    if let ProviderSetup::Ready(p) = &settings.provider {
        // Every key of the chain: a model must not be able to echo another's.
        for t in std::iter::once(&p.target).chain(&p.fallbacks) {
            secrets.extend(t.secrets());
        }
    }
    // And every provider key a session could switch to.
    secrets.extend(
        key_vars
            .iter()
            .filter_map(|k| provider_env.get(k))
            .map(|v| carapace_types::Secret::new(v.clone())),
    );
    scrubber.add(&secrets);
    tracing::info!(secrets = preloaded, "vault loaded");
    // MCP servers: secrets for their processes come from the vault now; the hub starts
    // them in the background (a slow or broken server never delays the daemon).
    let mcp_servers = {
        let path = dd.config();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let at = config::Locator::new(&path, &text);
        let sandbox = (!file.mcp.servers.is_empty())
            .then(|| crate::sandbox_cmd::init_program().map(carapace_sandbox::Sandbox::new))
            .transpose()?;
        let egress = Egress::new(file.egress.to_config())
            .map_err(|e| anyhow::anyhow!("{}: [egress]: {e}", dd.config().display()))?;
        let read = |name: &str| vault.file_value(name);
        let workspace = dd.workspace();
        let proxy = if file.mcp.servers.is_empty() {
            None
        } else {
            Some(config::mcp::ProxyEnv {
                socket_dir: mcp_socket_dir(dd)?,
                relay: std::env::current_exe().context("cannot find the cara executable")?,
                audit: mcp_audit(store.clone(), audit_key.clone(), scrubber.clone()),
            })
        };
        file.mcp.build(
            &at,
            &file.sandbox,
            &config::mcp::BuildEnv {
                vault: &read,
                sandbox,
                base_env: crate::sandbox_cmd::base_env(),
                workspace: &workspace,
                egress: Some(egress),
                proxy,
            },
        )?
    };
    // The vault values the servers get join the scrubber (a server may print them);
    // plain `env` text does not, or every result holding it would be redacted.
    let mcp_secrets: Vec<carapace_types::Secret<String>> = file
        .mcp
        .vault_entries()
        .iter()
        .filter_map(|name| vault.file_value(name))
        .filter(|v| v.expose().len() >= carapace_vault::MIN_SECRET_LEN)
        .collect();
    scrubber.add(&mcp_secrets);
    let mcp = (!mcp_servers.is_empty()).then(|| {
        let info = mcp_servers
            .iter()
            .map(|s| carapace_gate::McpServerInfo {
                name: s.name.clone(),
                host: config::mcp::http_host(s),
                max_result_bytes: s.max_result_bytes,
                call_timeout: s.call_timeout,
            })
            .collect();
        let shared = scrubber.clone();
        let hub = carapace_mcp::Hub::start(
            mcp_servers,
            carapace_mcp::HubEnv {
                scrub: Arc::new(move |s: &mut String| {
                    shared.current().scrub_string(s);
                }),
            },
        );
        carapace_gate::McpSetup { hub, servers: info }
    });
    let mcp_hub = mcp.as_ref().map(|m| m.hub.clone());
    let net = NetSetup {
        egress: Egress::new(file.egress.to_config())
            .map_err(|e| anyhow::anyhow!("{}: [egress]: {e}", dd.config().display()))?,
        inject: file.vault.rules(),
        secrets: Arc::new(vault),
        tool_hosts: file.egress.tool_hosts(),
    };
    let exec = ExecSetup {
        sandbox: carapace_sandbox::Sandbox::new(crate::sandbox_cmd::init_program()?),
        profile: settings.exec_profile.name.clone(),
        template: settings.exec_profile.spec(
            &dd.workspace(),
            crate::sandbox_cmd::base_env(),
            Vec::new(),
        ),
    };
    // Plain-English rules: compiled ones join the policy, the rest go to the judge. A
    // model that cannot be reached now leaves them to the judge; it never stops the start.
    let mut policy = settings.policy.clone();
    let english = crate::rules::from_config(&file);
    let judge = if english.is_empty() {
        None
    } else {
        let model = match &settings.provider {
            ProviderSetup::Ready(p) => crate::rules::Model::of(p)
                .inspect_err(|e| tracing::warn!("plain-English rules: {e:#}"))
                .ok(),
            ProviderSetup::Missing(_) => None,
        };
        let timeout = std::time::Duration::from_secs(*file.policy.judge_timeout_secs.get_ref());
        crate::rules::prepare(&store, &english, model, &mut policy, timeout).await?
    };
    let rules_report = crate::rules::report(&store, &english)?;
    // Shell mode: messaging channels, the dead-letter key, the provider pass-through.
    let channels = file
        .channels
        .build(&dd.config(), std::env::var_os("HOME").map(Into::into))?;
    let channel_names: Vec<String> = channels.iter().map(|c| c.name.clone()).collect();
    // A channel CLI's environment may hold its credentials; its errors reach the agent.
    let channel_env: Vec<carapace_types::Secret<String>> = file
        .channels
        .0
        .values()
        .flat_map(|t| t.env.values())
        .map(|v| carapace_types::Secret::new(v.get_ref().clone()))
        .filter(|v| v.expose().len() >= carapace_vault::MIN_SECRET_LEN)
        .collect();
    scrubber.add(&channel_env);
    let pass_targets = match &settings.provider {
        ProviderSetup::Ready(p) => {
            crate::agent_run::passthrough_targets(std::iter::once(&p.target).chain(&p.fallbacks))
        }
        ProviderSetup::Missing(_) => Vec::new(),
    };
    let passthrough = carapace_server::passthrough::Passthrough::new(
        pass_targets,
        scrubber.clone(),
        Default::default(),
    )
    .context("cannot set up the provider pass-through")?;
    let gate = Gate::new(GateDeps {
        store: store.clone(),
        audit_key: audit_key.clone(),
        workspace_root: dd.workspace(),
        policy,
        judge,
        scrubber,
        config: settings.gate.clone(),
        exec: Some(exec),
        net: Some(net),
        channels: (!channels.is_empty() || dead_letter_key.is_some()).then(|| {
            carapace_gate::ChannelSetup {
                channels,
                dead_letter_key,
            }
        }),
        mcp,
    })?;
    let (agent, provider_hint) = match settings.provider {
        ProviderSetup::Ready(p) => {
            let mut routes = Vec::new();
            for t in std::iter::once(&p.target).chain(&p.fallbacks) {
                let provider = t
                    .connect(p.request_timeout, p.stall_timeout)
                    .with_context(|| format!("cannot set up the model provider {}", t.provider))?;
                tracing::info!(provider = %t.provider, base_url = %t.base_url, model = %t.model, "model provider");
                routes.push(Route {
                    name: t.full_name(),
                    provider,
                    model: t.model.clone(),
                });
            }
            let catalog = config::providers::Catalog::new(
                file.providers.clone(),
                file.provider.aliases.clone(),
                file.provider.base_url.clone(),
                provider_env,
                routes.clone(),
                p.retry,
                p.request_timeout,
                p.stall_timeout,
            );
            let chain =
                ModelChain::new(routes, p.retry).context("cannot set up the model chain")?;
            let agent = Agent::with_router(
                Arc::new(chain),
                gate.clone(),
                store.clone(),
                AgentConfig {
                    model: p.target.full_name(),
                    max_steps: settings.max_steps,
                    system_prompt: settings
                        .system_prompt
                        .clone()
                        .unwrap_or_else(|| SYSTEM_PROMPT.to_string()),
                },
            )
            .with_accounting(file.usage.accounting())
            .with_catalog(Arc::new(catalog));
            (Some(agent), String::new())
        }
        ProviderSetup::Missing(hint) => {
            tracing::warn!("{hint}");
            (None, hint)
        }
    };
    // Shell mode: the agent socket for sandboxed agents, the owner socket for
    // `cara agent run`.
    let sockets = crate::agent_run::socket_dir(dd);
    let (agent_listener, owner_listener) = crate::agent_run::bind_sockets(&sockets)?;
    let runs = crate::agent_run::Runs::new(channel_names)?;
    let agent_socket = carapace_server::agent_socket::AgentSocket::new(
        gate.clone(),
        runs.clone(),
        Some(Arc::new(passthrough)),
    );
    tokio::spawn(agent_socket.serve(agent_listener));
    let launcher = Arc::new(crate::agent_run::Launcher {
        runs,
        store: store.clone(),
        gate: gate.clone(),
        token_digest: sha2::Sha256::digest(token.expose().as_bytes()).into(),
        dd: dd.clone(),
        agent_socket: sockets.join("agent.sock"),
        protected: crate::agent_run::protected_places(dd, &sockets)?,
        pending: Arc::new(tokio::sync::Semaphore::new(8)),
        refusals: std::sync::Mutex::new((None, 0)),
    });
    tokio::spawn(launcher.serve(owner_listener));

    let state = AppState::new(ServerDeps {
        store,
        gate: gate.clone(),
        agent,
        provider_hint,
        token,
        audit_key,
        max_body_bytes: settings.max_body_bytes,
        rules: rules_report,
    });

    let listener = tokio::net::TcpListener::bind(settings.bind).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{} is already in use; is another program listening there? Pick another with --bind or server.bind",
                settings.bind
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot listen on {}", settings.bind))
        }
    })?;
    let addr = listener.local_addr()?;
    let info = json!({ "pid": std::process::id(), "addr": addr.to_string(), "version": env!("CARGO_PKG_VERSION") });
    write_atomic(&dd.daemon_file(), info.to_string().as_bytes())?;
    gate.record(
        "daemon_started",
        json!({ "addr": addr.to_string(), "version": env!("CARGO_PKG_VERSION") }),
    )
    .map_err(|e| anyhow::anyhow!("cannot write the audit log: {e}"))?;
    tracing::info!(%addr, data_dir = %dd.root().display(), "carapace gateway listening");
    eprintln!("cara: listening on http://{addr}");

    // Graceful shutdown waits for requests in flight, and a turn can wait minutes for an
    // approval or a slow model: after the signal they get a moment, then are cut off.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            stopping.notify_one();
        }
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signalled);
    let served = tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("requests still running {SHUTDOWN_GRACE:?} after the signal; stopping anyway");
            Ok(())
        }
    };
    if let Some(hub) = mcp_hub {
        hub.shutdown().await;
    }
    let _ = gate.record("daemon_stopped", json!({}));
    // Remove the address file only if it is still ours.
    if std::fs::read_to_string(dd.daemon_file())
        .is_ok_and(|t| t.contains(&format!("\"pid\":{}", std::process::id())))
    {
        let _ = std::fs::remove_file(dd.daemon_file());
    }
    drop(lock);
    served.context("the server failed")
}

/// How long requests in flight may run on after Ctrl-C or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARAPACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The directory of the MCP servers' egress sockets, `mcp` in the socket directory: the
/// daemon's alone (0700, set at every start, whoever created it). The socket directory
/// itself is created 0700 when missing and otherwise left as it is (a system install
/// shares it with a group).
fn mcp_socket_dir(dd: &DataDir) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let run = crate::agent_run::socket_dir(dd);
    if !run.exists() {
        std::fs::create_dir_all(&run)
            .with_context(|| format!("cannot create {}", run.display()))?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", run.display()))?;
    }
    let dir = run.join("mcp");
    if let Err(e) = std::fs::create_dir(&dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(e).with_context(|| format!("cannot create {}", dir.display()));
    }
    let meta = std::fs::symlink_metadata(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory (a symlink?)", dir.display());
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    Ok(dir)
}

/// Records an MCP server's tunnel decisions in the audit chain, as the Gate records its
/// own events (scrubbed, with the time).
fn mcp_audit(
    store: Arc<Store>,
    key: Arc<AuditKey>,
    scrubber: SharedScrubber,
) -> carapace_mcp::Audit {
    Arc::new(move |event: &str, mut fields: serde_json::Value| {
        scrubber.current().scrub_json(&mut fields);
        let mut record = json!({ "ts_ms": carapace_gate::now_ms(), "event": event });
        if let (Some(map), serde_json::Value::Object(extra)) = (record.as_object_mut(), fields) {
            map.extend(extra);
        }
        store
            .append_audit(&key, &record)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}
