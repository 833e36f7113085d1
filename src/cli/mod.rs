//! The command line. `anyhow` lives only here, at the edge; every failure prints one line
//! (config validation prints one line per problem) and exits non-zero.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod accounts;
mod audit;

use crate::config::Config;
use crate::gateway::server;
use crate::gateway::state::ConfigSource;
use crate::tls::devcerts;

/// The demo configuration, built in so `portcullis demo` works from a fresh checkout.
const DEMO_CONFIG: &str = include_str!("../../demo/portcullis.toml");
/// The demo's accounts: (tenant, username, password, roles). Demo data only, printed at
/// start so anyone can sign in; never use these anywhere else.
const DEMO_USERS: &[(&str, &str, &str, &[&str])] = &[
    ("acme", "alice", "alice-demo-passphrase", &["admin"]),
    ("acme", "bob", "bob-demo-passphrase", &[]),
    ("globex", "carol", "carol-demo-passphrase", &[]),
];
/// Where the demo's echo backend listens (the example policies point here).
const DEMO_ECHO: &str = "127.0.0.1:18080";

/// Portcullis: a multi-tenant authentication gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Run on built-in defaults: dev certificates, the example policies, an echo backend.
    Demo,
    /// Validate the config and every policy; report all errors with file and line.
    Check {
        /// The config file.
        #[arg(long, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Write a local CA and leaf certificates for development hosts.
    DevCerts {
        /// Output folder.
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// Hosts to make certificates for (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = devcerts::DEMO_HOSTS.map(String::from))]
        hosts: Vec<String>,
    },
    /// Create the master key and the upstream-JWT signing keys (missing ones only).
    Keygen {
        /// The config file (names the key files).
        #[arg(long, default_value = "portcullis.toml")]
        config: PathBuf,
        /// Add a new JWT signing key; the previous one stays published for the grace period.
        #[arg(long)]
        rotate_jwt: bool,
    },
    /// Manage a tenant's local accounts.
    User {
        /// The config file.
        #[arg(long, default_value = "portcullis.toml", global = true)]
        config: PathBuf,
        /// The tenant id.
        #[arg(long, global = true)]
        tenant: Option<String>,
        #[command(subcommand)]
        command: accounts::UserCommand,
    },
    /// Read a tenant's audit log (newest first), or verify its hash chain with `verify`.
    Audit {
        /// The config file.
        #[arg(long, default_value = "portcullis.toml", global = true)]
        config: PathBuf,
        /// The tenant id (`_operator` for operator-level events).
        #[arg(long, global = true)]
        tenant: Option<String>,
        /// Only records since: 24h, 7d, 30m, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this event type (e.g. login_failed).
        #[arg(long)]
        event: Option<String>,
        /// Only records about this user.
        #[arg(long)]
        user: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<audit::AuditCommand>,
    },
    /// Run the built-in echo backend, which answers with JSON of what it received.
    EchoBackend {
        /// Address to listen on.
        #[arg(long, default_value = DEMO_ECHO)]
        listen: SocketAddr,
    },
}

/// Parse the command line, run the command, and return the process exit code.
pub fn run() -> i32 {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version are not failures.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One line, like every other failure; `--help` has the details.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see --help)");
            return 1;
        }
    };
    match dispatch(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => server::run(ConfigSource::File(config)).map_err(start_error),
        Command::Check { config } => check(&config),
        Command::DevCerts { out, hosts } => {
            let written = devcerts::write(&out, &hosts)?;
            println!("wrote {} files to {}", written.len(), out.display());
            Ok(())
        }
        Command::EchoBackend { listen } => {
            crate::echo::run(listen).with_context(|| format!("echo backend on {listen}"))
        }
        Command::Demo => demo(),
        Command::Audit {
            config,
            tenant,
            since,
            event,
            user,
            limit,
            json,
            command,
        } => {
            let tenant = tenant.context("--tenant is required")?;
            match command {
                Some(audit::AuditCommand::Verify) => audit::verify(&config, &tenant),
                None => audit::query(
                    &config,
                    &tenant,
                    audit::Query {
                        since,
                        event,
                        user,
                        limit,
                        json,
                    },
                ),
            }
        }
        Command::Keygen { config, rotate_jwt } => {
            let config = load(&config)?;
            accounts::keygen(&config, rotate_jwt)
        }
        Command::User {
            config,
            tenant,
            command,
        } => {
            let tenant = tenant.context("--tenant is required")?;
            accounts::user(&config, &tenant, command)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} problem(s) in the configuration", errors.0.len())
    })
}

fn check(path: &Path) -> anyhow::Result<()> {
    crate::tls::crypto::install()?;
    match Config::load(path) {
        Ok(config) => {
            let routes: usize = config.tenants.iter().map(|t| t.routes.len()).sum();
            println!("ok: {} tenants, {routes} routes", config.tenants.len());
            Ok(())
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            bail!("{} problem(s) in the configuration", errors.0.len())
        }
    }
}

/// Config errors are printed one per line; anything else is one line.
fn start_error(e: server::StartError) -> anyhow::Error {
    if let server::StartError::Config(errors) = &e {
        for line in &errors.0 {
            eprintln!("{line}");
        }
        return anyhow::anyhow!(
            "{} problem(s) in the configuration; not starting",
            errors.0.len()
        );
    }
    e.into()
}

fn demo() -> anyhow::Result<()> {
    let certs = Path::new("certs-dev");
    let hosts: Vec<String> = devcerts::DEMO_HOSTS.map(String::from).to_vec();
    if !hosts
        .iter()
        .all(|h| certs.join(format!("{h}.crt")).exists())
    {
        devcerts::write(certs, &hosts)?;
    }
    let source = ConfigSource::Embedded {
        text: DEMO_CONFIG,
        name: PathBuf::from("demo/portcullis.toml (built in)"),
        base: PathBuf::from("demo"),
    };
    let config = source.load().map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        anyhow::anyhow!("the built-in demo configuration is invalid")
    })?;
    accounts::keygen(&config, false)?;
    accounts::ensure_demo_users(&config, DEMO_USERS)?;
    let echo: SocketAddr = DEMO_ECHO.parse()?;
    let echo_listener = std::net::TcpListener::bind(echo)
        .with_context(|| format!("demo echo backend cannot listen on {echo}"))?;
    echo_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("demo-echo".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(echo_listener) {
                        crate::echo::serve(listener).await;
                    }
                });
            }
        })?;
    println!(
        "Portcullis demo
  https://acme.localhost:8443/        acme, public route (echo backend shows what it received)
  https://acme.localhost:8443/app     acme, signed-in users only (redirects to the sign-in form)
  https://acme.localhost:8443/admin   acme, role \"admin\" only
  https://globex.localhost:8443/      globex, public route
  http://acme.localhost:8080/         redirects to HTTPS (308)
  http://127.0.0.1:9090/metrics       operator listener: /healthz /readyz /metrics
  certificates: certs-dev/ca.crt      e.g. curl --cacert certs-dev/ca.crt https://acme.localhost:8443/
  echo backend: http://{DEMO_ECHO}
Demo logins (this demo's store only):
  acme:   alice / {}   (roles: admin)
  acme:   bob   / {}
  globex: carol / {}",
        DEMO_USERS[0].2, DEMO_USERS[1].2, DEMO_USERS[2].2
    );
    server::run(source).map_err(start_error)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let mut filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // pingora prints whole request and response headers (cookies, the upstream JWT) at debug
    // and trace: capped at info whatever the operator asks, so no log level leaks credentials.
    for capped in [
        "pingora_proxy=info",
        "pingora_core=info",
        "pingora=info",
        "h2=info",
        "hyper=info",
    ] {
        if let Ok(directive) = capped.parse() {
            filter = filter.add_directive(directive);
        }
    }
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
