//! `cara`: the Carapace binary. Parses the command line into validated settings and
//! calls the libraries; it holds the wiring and the terminal front ends, no policy and
//! no tool execution of its own.

mod agent_run;
mod chat;
mod client;
mod commands;
mod config;
mod datadir;
mod dlq_cmd;
mod doctor;
mod ipc;
mod mcp_cmd;
mod mcp_serve;
mod passthrough;
mod rules;
mod sandbox_cmd;
mod serve;
mod session_cmd;
mod setup;
mod shim;
mod system_cmd;
mod vault_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::datadir::DataDir;

/// Carapace: a security-first personal AI agent gateway.
///
/// Every tool call the agent makes passes the Gate (validation, rate limits, policy,
/// your approval, audit); secrets are scrubbed from what the model sees; every decision
/// lands in a hash-chained audit log.
///
/// Start here: `cara chat` (starts the gateway in the background if none runs).
#[derive(Parser)]
#[command(name = "cara", version, propagate_version = true)]
struct Cli {
    /// Data directory (config.toml, server.token, carapace.db, workspace/, logs/).
    #[arg(long, global = true, env = "CARAPACE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (Ctrl-C or SIGTERM stops it cleanly).
    Serve {
        /// Loopback address to listen on [default: server.bind from config, 127.0.0.1:8321].
        #[arg(long, env = "CARAPACE_BIND", value_name = "ADDR:PORT")]
        bind: Option<String>,
    },
    /// Chat with the agent in the terminal; starts the gateway in the background if none runs.
    ///
    /// Commands inside the chat: /help, /new, /session, /approve [ID], /deny [ID], /exit.
    /// When the agent wants to do something that needs your approval, you are asked
    /// inline and answer y or n. Ctrl-C cancels a running turn; at the prompt it exits.
    Chat {
        /// Continue an existing session instead of starting a new one.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Do not start a gateway; fail if none is running.
        #[arg(long)]
        no_start: bool,
        /// Let this chat's sessions' network tools reach only HOST (repeatable; `host`,
        /// `host:port` or `*.domain`). It narrows [egress] allow_hosts, never widens it.
        #[arg(long = "allow-host", value_name = "HOST")]
        allow_hosts: Vec<String>,
    },
    /// Show whether the gateway runs, where, with which model, and what waits for you.
    Status,
    /// Show token counts and cost: today's total against the daily budget, and per day
    /// and model (UTC days).
    Usage {
        /// How many days back, today included.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// One session's totals instead.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Check configuration, permissions, the provider, the audit log and kernel
    /// features, and say what to fix.
    Doctor,
    /// Choose a provider and model, keep its key in the vault, write config.toml, and
    /// make one test call (asks at a terminal; --non-interactive for scripts).
    Setup {
        /// The provider: openai, anthropic, gemini, ollama, bedrock, venice, openrouter,
        /// groq, or a [providers.NAME] of yours.
        #[arg(long)]
        provider: Option<String>,
        /// The model, like claude-sonnet-4-5 or llama3.2.
        #[arg(long)]
        model: Option<String>,
        /// The provider's endpoint, when not its usual one (an OpenAI-compatible server
        /// such as http://127.0.0.1:8000/v1 for `openai`).
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// Keep the provider's key, read from its usual variable, in the encrypted vault.
        #[arg(long)]
        store_key: bool,
        /// Ask nothing: take everything from flags and the environment (for scripts).
        #[arg(long)]
        non_interactive: bool,
        /// Skip the test call.
        #[arg(long)]
        no_test: bool,
    },
    /// Show, read, change or check config.toml.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Verify or read the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List and answer tool calls waiting for your approval.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// List sessions, show one (labels, what it has seen, friction, grants, messages with
    /// their labels), or reset its friction.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Store, list and remove secrets; no command prints a value.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Run a command in the Carapace sandbox, or check what the kernel offers.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Call the agent socket from inside a Carapace sandbox (JSON-RPC, docs/agent-socket.md).
    ///
    /// Prints the result as JSON and exits 0; a refusal prints the JSON-RPC error object on
    /// standard error and exits 1; no connection or a protocol failure exits 2. With
    /// channel.watch it then prints each message's params, one JSON line each.
    Ipc(ipc::IpcArgs),
    /// Install or list the shims: imsg, signal-cli, discord and gog as names of cara.
    #[command(subcommand)]
    Shim(shim::ShimCommand),
    /// Show and compile the plain-English rules of config.toml ([[rules]] text = "...").
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run another agent (Claude Code, OpenClaw, ...) inside Carapace's trust boundary.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Look at, release or discard the outbound messages the Gate blocked (the
    /// dead-letter queue); the texts are sealed, and only the daemon opens them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run Carapace as a system service under its own user (Linux, systemd; as root).
    #[command(subcommand)]
    System(SystemCommand),
    /// MCP: the tool servers of [[mcp.servers]] (list, their tools and effect classes, a
    /// test), and `cara mcp serve`, which offers the session's tools to an MCP client.
    #[command(subcommand)]
    Mcp(McpCommand),
}

#[derive(Subcommand)]
enum McpCommand {
    /// List the configured MCP servers: transport, sandbox, state, tools, restarts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one server's tools with the effect class each got and why.
    Tools {
        /// The server's name (as in [[mcp.servers]] name = "...").
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check one server: (re)connect, list its tools, report what failed.
    Test {
        /// The server's name.
        name: String,
    },
    /// Speak MCP on stdin/stdout and offer a session's tools to the client (Claude
    /// Code, Cursor, ...); every call goes through the Gate.
    ///
    /// Inside `cara agent run` it uses the agent socket ($CARAPACE_SOCKET) and the run's
    /// session. Anywhere else (an editor starting it as your user) it uses the running
    /// gateway's API with your token, in the session of --session or in a new one whose
    /// id it prints on stderr (stdout is the MCP channel). Exits 2 when no gateway runs.
    Serve(mcp_serve::ServeArgs),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Show each rule: its text, name, and the structured rule it compiled to, or why not.
    Show {
        /// Print the rules as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile the rules not compiled yet with the configured model, and show each result.
    Compile {
        /// Compile every rule again, compiled or not.
        #[arg(long)]
        force: bool,
    },
    /// Confirm that compiled rules say what their texts say; until then the model also
    /// judges the text per call (run with the gateway stopped; applies at its next start).
    Confirm {
        /// Rule names, like english.1a2b3c4d5e6f.
        names: Vec<String>,
        /// Confirm every compiled rule.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Store a secret; the value is read from a prompt (no echo) or standard input.
    ///
    /// The vault (vault.json in the data directory) is encrypted with AES-256-GCM under
    /// a key derived with Argon2id from your passphrase ($CARAPACE_VAULT_PASSPHRASE, or
    /// asked), or under vault.key_file. It is created on first use. With `--backend
    /// keyring` (or `backend = "keyring"` in the entry's [vault.secrets] table) the value
    /// goes to the OS keyring instead, under service `carapace`.
    Set {
        /// Entry name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Where to store it: the encrypted file (default) or the OS keyring.
        #[arg(long, value_enum)]
        backend: Option<WritableBackend>,
    },
    /// List entries: name, backend, hosts it is injected for, whether its first use asks.
    List,
    /// Remove an entry from the encrypted vault, or from the OS keyring.
    Rm {
        /// Entry name.
        name: String,
        /// Where it is stored: the encrypted file (default) or the OS keyring.
        #[arg(long, value_enum)]
        backend: Option<WritableBackend>,
    },
    /// Move API keys from environment variables into the vault.
    ///
    /// Without names, imports whichever of the usual provider variables are set
    /// (OPENAI_API_KEY, ANTHROPIC_API_KEY, GITHUB_TOKEN, ...). Entries are named like
    /// the variables.
    ImportEnv {
        /// Variables to import.
        names: Vec<String>,
    },
}

/// The backends `cara vault set` and `rm` write to.
#[derive(Clone, Copy, ValueEnum)]
enum WritableBackend {
    /// The encrypted vault.json.
    File,
    /// The OS keyring (Secret Service, Keychain).
    Keyring,
}

impl WritableBackend {
    fn kind(self) -> config::vault::BackendKind {
        match self {
            WritableBackend::File => config::vault::BackendKind::File,
            WritableBackend::Keyring => config::vault::BackendKind::Keyring,
        }
    }
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Run a command isolated by namespaces, Landlock, seccomp and rlimits.
    ///
    /// The workspace (the current directory unless --workspace) appears at /workspace,
    /// read-write in the `tool` profile. Nothing else of your home is visible, there is no
    /// network but loopback, and the environment is built from scratch. The exit status
    /// is the command's.
    Run {
        /// Profile from config.toml: tool (default), readonly, or one of your own.
        #[arg(long, value_name = "P")]
        profile: Option<String>,
        /// Extra bind, SRC:DST (read-write) or SRC:DST:ro; repeatable.
        #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
        binds: Vec<String>,
        /// Directory to bind at /workspace [default: the current directory].
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Environment variable for the command, NAME=VALUE; repeatable.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Report each kernel feature the sandbox uses as available or missing.
    Check,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings and where each came from.
    Show,
    /// Print one value, by dotted key (e.g. provider.model).
    Get {
        /// Dotted key, like server.bind.
        key: String,
    },
    /// Set one value, by dotted key; the file is validated before it is written.
    Set {
        /// Dotted key, like provider.model.
        key: String,
        /// New value (TOML syntax for numbers, booleans and arrays; plain text for strings).
        value: String,
    },
    /// Check config.toml; exit 1 with file, line and key on the first problem.
    Validate,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole hash chain and check the signed head; exit 1 naming the first bad record.
    Verify,
    /// Show the last records.
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// The most recent sessions with their labels and friction.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One session: label, sources seen, exposure and friction level, grants, and every
    /// message with its source and label.
    Show {
        /// Session id (s_...).
        id: String,
        /// Print the gateway's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Reset a session's friction: exposure back to zero and its grants removed (its
    /// label stays: what it has seen does not change).
    Reset {
        /// Session id (s_...).
        id: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// The blocked messages waiting for you: id, age, channel, recipient, why, size.
    List {
        /// Also the ones already released or discarded.
        #[arg(long)]
        all: bool,
        /// Print the gateway's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// One blocked message: who sent it to whom, why it was stopped, and its text.
    Show {
        /// Dead-letter id (dl_...).
        id: String,
        /// Print the gateway's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Send a held message after all; it shows the message and asks first.
    Release {
        /// Dead-letter id (dl_...).
        id: String,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Throw a held message away for good; asks first.
    Discard {
        /// Dead-letter id (dl_...).
        id: String,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Create the `carapace` user and `carapace-clients` group, /var/lib/carapace (0700),
    /// /run/carapace (0750), /usr/local/bin/cara and the systemd unit carapace.service.
    ///
    /// Records what it created in /var/lib/carapace.install-manifest.json; running it
    /// again changes nothing that is already right.
    Install {
        /// Install into this directory as if it were / (for images and tests).
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
        /// The daemon's system user (it gets a primary group of the same name).
        #[arg(long, default_value = "carapace", value_name = "NAME")]
        user: String,
        /// The group allowed into the socket directory.
        #[arg(long, default_value = "carapace-clients", value_name = "NAME")]
        group: String,
        /// The account that uses cara, added to the group [default: $SUDO_USER].
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// The binary to install [default: this one].
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Also enable and start the service (only with --root /, under systemd).
        #[arg(long)]
        start: bool,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop the service and remove what `install` created; the data directory is kept
    /// (given to root) unless --purge.
    Uninstall {
        /// The directory the install went into.
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
        /// Also delete /var/lib/carapace: the vault, the audit log, the dead letters.
        #[arg(long)]
        purge: bool,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Run an agent Carapace did not write (Claude Code, OpenClaw, a script) in a sandbox
    /// the gateway starts: your terminal, the workspace, no network, the agent socket and
    /// the messaging shims, and its model calls passed through with the key added outside.
    ///
    /// Example: cara agent run --profile claude-code -- claude
    Run {
        /// Which variables point the agent's model client at the pass-through:
        /// claude-code (ANTHROPIC_BASE_URL), openclaw (OPENAI_BASE_URL) or custom (both).
        #[arg(long, default_value = "custom", value_parser = ["claude-code", "openclaw", "custom"])]
        profile: String,
        /// The directory the agent may read and write [default: the current directory].
        #[arg(long, value_name = "DIR")]
        workspace: Option<std::path::PathBuf>,
        /// Wall-clock limit of the run in seconds [default: 24 hours].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Start the run's session trusted: you vouch for everything the agent will read
        /// (its workspace, its home, its model's answers). Without it the session is
        /// untrusted, so sends, writes and commands ask you unless a plan covers them.
        #[arg(long)]
        trust_input: bool,
        /// The agent's command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List pending approvals.
    List,
    /// Let a pending call (or a proposed plan) go ahead.
    Approve {
        /// Approval id (ap_...).
        id: String,
        /// Also let later calls of this tool to the same places pass, for the rest of
        /// the session.
        #[arg(long, conflicts_with = "steps")]
        session: bool,
        /// For a plan: approve only these steps, like 1-3,5.
        #[arg(long, value_name = "STEPS")]
        steps: Option<String>,
    },
    /// Refuse a pending call.
    Deny {
        /// Approval id (ap_...).
        id: String,
    },
}

fn main() -> ExitCode {
    // Invoked as imsg, signal-cli, discord or gog: a shim with the real tool's syntax.
    if let Some(tool) = shim::invoked_as() {
        return shim::main(tool);
    }
    // A sandbox's init process is this binary re-executed; it must start before any
    // thread does, so it comes before everything else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == carapace_sandbox::INIT_ARG)
    {
        carapace_sandbox::init_main();
    }
    // The first program of `cara agent run`'s sandbox: the provider pass-through and CMD.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == passthrough::ENTRY_ARG)
    {
        return passthrough::entry_main(std::env::args_os().skip(2).collect());
    }
    // The first program of an MCP server's sandbox with egress: the relay to the proxy.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == carapace_mcp::relay::ENTRY_ARG)
    {
        return carapace_mcp::relay::relay_main(std::env::args_os().skip(2).collect());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // These run inside the sandbox, which has no data directory.
    let command = match cli.command {
        Command::Ipc(args) => return Ok(ipc::run(args)),
        Command::Shim(c) => return shim::command(c),
        Command::Mcp(McpCommand::Serve(args)) => return Ok(mcp_serve::run(args)),
        command => command,
    };
    let root = match cli.data_dir {
        Some(d) => d,
        None => datadir::default_root()?,
    };
    let dd = DataDir::new(root);
    let runtime = |threads: usize| {
        let mut b = if threads > 1 {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        b.enable_all().build()
    };
    match command {
        Command::Ipc(_) | Command::Shim(_) | Command::Mcp(McpCommand::Serve(_)) => {
            unreachable!("dispatched above")
        }
        Command::Mcp(c) => runtime(1)?.block_on(async {
            match c {
                McpCommand::List { json } => mcp_cmd::list(&dd, json).await,
                McpCommand::Tools { name, json } => mcp_cmd::tools(&dd, &name, json).await,
                McpCommand::Test { name } => mcp_cmd::test(&dd, &name).await,
                McpCommand::Serve(_) => unreachable!("dispatched above"),
            }
        }),
        Command::Serve { bind } => {
            runtime(2)?.block_on(serve::serve(&dd, bind))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chat {
            session,
            no_start,
            allow_hosts,
        } => runtime(1)?.block_on(chat::chat(&dd, session, no_start, allow_hosts)),
        Command::Status => runtime(1)?.block_on(commands::status(&dd)),
        Command::Usage {
            days,
            json,
            session,
        } => runtime(1)?.block_on(commands::usage(&dd, days, json, session)),
        Command::Doctor => runtime(1)?.block_on(doctor::doctor(&dd)),
        Command::Setup {
            provider,
            model,
            base_url,
            store_key,
            non_interactive,
            no_test,
        } => runtime(1)?.block_on(setup::setup(
            &dd,
            setup::SetupArgs {
                provider,
                model,
                base_url,
                store_key,
                non_interactive,
                no_test,
            },
        )),
        Command::Config(c) => match c {
            ConfigCommand::Show => commands::config_show(&dd),
            ConfigCommand::Get { key } => commands::config_get(&dd, &key),
            ConfigCommand::Set { key, value } => commands::config_set(&dd, &key, &value),
            ConfigCommand::Validate => commands::config_validate(&dd),
        },
        Command::Audit(c) => match c {
            AuditCommand::Verify => runtime(1)?.block_on(commands::audit_verify(&dd)),
            AuditCommand::Tail { n, json } => {
                runtime(1)?.block_on(commands::audit_tail(&dd, n, json))
            }
        },
        Command::Session(c) => runtime(1)?.block_on(async {
            match c {
                SessionCommand::List { limit } => session_cmd::list(&dd, limit).await,
                SessionCommand::Show { id, json } => session_cmd::show(&dd, &id, json).await,
                SessionCommand::Reset { id } => session_cmd::reset(&dd, &id).await,
            }
        }),
        Command::Approvals(c) => runtime(1)?.block_on(async {
            match c {
                ApprovalsCommand::List => commands::approvals_list(&dd).await,
                ApprovalsCommand::Approve { id, session, steps } => {
                    let body = match (session, steps) {
                        (true, _) => serde_json::json!({ "decision": "session" }),
                        (false, Some(steps)) => {
                            serde_json::json!({ "decision": "approve", "steps": steps })
                        }
                        (false, None) => serde_json::json!({ "decision": "approve" }),
                    };
                    commands::approvals_decide(&dd, &id, body).await
                }
                ApprovalsCommand::Deny { id } => {
                    let body = serde_json::json!({ "decision": "deny" });
                    commands::approvals_decide(&dd, &id, body).await
                }
            }
        }),
        Command::Vault(c) => match c {
            VaultCommand::Set { name, backend } => {
                vault_cmd::set(&dd, &name, backend.map(WritableBackend::kind))
            }
            VaultCommand::List => vault_cmd::list(&dd),
            VaultCommand::Rm { name, backend } => {
                vault_cmd::rm(&dd, &name, backend.map(WritableBackend::kind))
            }
            VaultCommand::ImportEnv { names } => vault_cmd::import_env(&dd, names),
        },
        Command::Sandbox(SandboxCommand::Check) => sandbox_cmd::check(),
        Command::Sandbox(SandboxCommand::Run {
            profile,
            binds,
            workspace,
            env,
            command,
        }) => runtime(1)?.block_on(sandbox_cmd::run(
            &dd,
            sandbox_cmd::RunArgs {
                profile,
                binds,
                workspace,
                env,
                command,
            },
        )),
        Command::Agent(AgentCommand::Run {
            profile,
            workspace,
            timeout,
            trust_input,
            command,
        }) => {
            let profile = agent_run::Profile::parse(&profile).expect("clap checked the profile");
            let workspace = match workspace {
                Some(w) => w,
                None => anyhow::Context::context(
                    std::env::current_dir(),
                    "cannot read the current directory",
                )?,
            };
            runtime(1)?.block_on(async {
                if client::Daemon::find(&dd).await?.is_none() {
                    client::Daemon::start(&dd).await?;
                }
                anyhow::Ok(())
            })?;
            let token = dd.read_token()?;
            let code = agent_run::run_cli(
                &dd,
                &token,
                profile,
                &workspace,
                timeout,
                trust_input,
                &command,
            )?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Dlq(c) => runtime(1)?.block_on(async {
            match c {
                DlqCommand::List { all, json } => dlq_cmd::list(&dd, all, json).await,
                DlqCommand::Show { id, json } => dlq_cmd::show(&dd, &id, json).await,
                DlqCommand::Release { id, yes } => {
                    dlq_cmd::resolve(&dd, &id, dlq_cmd::Decision::Release, yes).await
                }
                DlqCommand::Discard { id, yes } => {
                    dlq_cmd::resolve(&dd, &id, dlq_cmd::Decision::Discard, yes).await
                }
            }
        }),
        Command::System(SystemCommand::Install {
            root,
            user,
            group,
            owner,
            bin,
            start,
            dry_run,
        }) => system_cmd::install(system_cmd::InstallArgs {
            root,
            user,
            group,
            owner,
            bin,
            start,
            dry_run,
        }),
        Command::System(SystemCommand::Uninstall {
            root,
            purge,
            dry_run,
        }) => system_cmd::uninstall(system_cmd::UninstallArgs {
            root,
            purge,
            dry_run,
        }),
        Command::Rules(RulesCommand::Show { json }) => runtime(1)?.block_on(rules::show(&dd, json)),
        Command::Rules(RulesCommand::Compile { force }) => {
            runtime(1)?.block_on(rules::compile_command(&dd, force))
        }
        Command::Rules(RulesCommand::Confirm { names, all }) => {
            runtime(1)?.block_on(rules::confirm_command(&dd, &names, all))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
