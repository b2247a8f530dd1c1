//! The command line: `run`, `check`, `token`, `keygen` and `public-key`.
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad command-line usage, 78 an invalid
//! configuration or key (`EX_CONFIG` from sysexits.h).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::{self, Config, Origin};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload;
use crate::server::{self, Listeners};
use crate::telemetry::{self, LogFormat};
use crate::tls::intercept;
use crate::token::{self, Algorithm, KeyId, SigningKey};

/// Exit code for an invalid configuration or key.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "asap-proxy",
    version,
    about = "HTTP proxy that signs every routed request with an ASAP token"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM.
    ///
    /// Without a configuration file, give --route: the signing settings then come from the
    /// environment variables of ASAP tooling: ASAP_ISSUER, ASAP_PRIVATE_KEY (PEM, base64 DER
    /// or data URI), ASAP_KEY_ID (unless the data URI names it), ASAP_AUDIENCE (the default
    /// audience) and ASAP_ALGORITHM (default: RS256 for RSA keys, ES256/384/512 for EC keys).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log line format on standard error.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        #[command(flatten)]
        env: EnvConfig,
    },
    /// Validate the configuration and keys, and print the route table (never secrets).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a freshly minted token for the route that URL matches.
    ///
    /// For example: curl -H "Authorization: Bearer $(asap-proxy token -c proxy.yaml URL)" URL
    Token {
        #[command(flatten)]
        config: ConfigArg,
        /// The URL whose route to use, such as https://api.example.com/v1/items.
        url: String,
    },
    /// Generate a private key (PKCS#8 PEM, mode 0600) and its public key to publish.
    ///
    /// Writes DIR/private/<kid>.pem and DIR/public/<kid>: the public file's path below
    /// DIR/public is the path under which a key repository serves it. With a kid such as
    /// svc/2026-12-01.pem the private key is DIR/private/svc/2026-12-01.pem, ready for
    /// `private_key_dir: DIR/private`.
    Keygen {
        /// Signing algorithm the key is for.
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Algorithm,
        /// Key id, starting with the issuer, such as my-service/2026-12-01.
        #[arg(long)]
        kid: String,
        /// Directory to write the keys into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (SubjectPublicKeyInfo PEM) of every configured key, with its kid.
    PublicKey {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage the certificate authority used to intercept HTTPS to routed hosts.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA certificate and key (mode 0600), and print how to make clients trust it.
    ///
    /// Writes DIR/asap-proxy-ca.pem and DIR/asap-proxy-ca-key.pem; never overwrites.
    Init {
        /// Directory to write the CA into.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A configuration from the environment and the command line, for containers.
#[derive(Debug, Args)]
struct EnvConfig {
    /// Route HOST (as in a route's host key), with its audience after `=` or from
    /// ASAP_AUDIENCE; repeat for more routes. Selects configuration from the environment.
    #[arg(
        long = "route",
        value_name = "HOST[=AUDIENCE]",
        conflicts_with = "config"
    )]
    routes: Vec<String>,
    /// Forward-proxy listener, with --route.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        requires = "routes"
    )]
    listen: String,
    /// Client network allowed to use the proxy (CIDR), with --route; repeatable. Needed for
    /// a listener that is not on loopback.
    #[arg(long = "allow", value_name = "CIDR", requires = "routes")]
    allow: Vec<String>,
    /// Admin listener (health and metrics), with --route.
    #[arg(long, value_name = "ADDR", requires = "routes")]
    admin: Option<String>,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        short,
        long = "config",
        env = "ASAP_PROXY_CONFIG",
        default_value = "proxy.yaml"
    )]
    config: PathBuf,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
        .map_err(|e: token::UnknownAlgorithm| e.to_string())
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` sets up logging once its configuration, which may set the level, is loaded.
    if !matches!(cli.command, Command::Run { .. }) {
        telemetry::init(LogFormat::Text, None);
    }
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // `asap-proxy check | head` closes the pipe early; that is not a failure.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) if err.is::<config::Error>() => {
            eprintln!("asap-proxy: invalid configuration: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            eprintln!("asap-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            log_format,
            env,
        } if env.routes.is_empty() => run(Source::File(&config.config), log_format),
        Command::Run {
            log_format, env, ..
        } => run(Source::Environment(&env), log_format),
        Command::Check { config } => check(&config.config),
        Command::Token { config, url } => print_token(&config.config, &url),
        Command::Keygen {
            algorithm,
            kid,
            out,
        } => keygen(algorithm, &kid, &out),
        Command::PublicKey { config } => public_keys(&config.config),
        Command::Ca {
            command: CaCommand::Init { out },
        } => ca_init(&out),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

/// Where `run` takes its configuration from.
enum Source<'a> {
    File(&'a Path),
    /// ASAP tooling's environment variables and `--route`: nothing to watch or reload.
    Environment(&'a EnvConfig),
}

fn run(source: Source<'_>, log_format: LogFormat) -> anyhow::Result<()> {
    let config = match source {
        Source::File(path) => load(path)?,
        Source::Environment(env) => {
            config::parse_text(&env_config(env)?, Path::new("<environment and --route>"))?
        }
    };
    telemetry::init(log_format, config.log_level.as_deref());
    // One worker needs no work stealing: the single-threaded scheduler does the same job with
    // less synchronisation. Signing still runs on the separate blocking pool.
    let mut runtime = match config.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        let admin_listener = match config.admin {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (admin)"))?,
            ),
            None => None,
        };
        let mut own = listeners.addrs();
        own.extend(admin_listener.as_ref().and_then(|l| l.local_addr().ok()));
        let grace = config.shutdown_grace;
        let routes = config.routes.len();
        let metrics = Arc::new(Metrics::new());
        let proxy = Arc::new(
            Proxy::new(config, metrics.clone(), own).context("cannot set up upstream TLS")?,
        );
        let shutdown = CancellationToken::new();
        // The admin listener outlives the drain, so that /readyz can say 503 meanwhile.
        let admin_stop = CancellationToken::new();
        let admin = Arc::new(AdminState::new(metrics));
        let admin_task = admin_listener.map(|listener| {
            tokio::spawn(admin::serve(
                listener,
                admin.clone(),
                admin_stop.clone().cancelled_owned(),
            ))
        });
        if let Source::File(path) = source {
            tokio::spawn(reload::watch(
                path.to_owned(),
                proxy.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(signal_shutdown(shutdown.clone()));
        tracing::info!(routes, "asap-proxy started");
        admin.set_ready(true);
        let stopping = {
            let admin = admin.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                // Load balancers stop sending new clients while the rest drains.
                admin.set_ready(false);
            }
        };
        tokio::join!(
            server::run(proxy, listeners, shutdown.clone(), grace),
            stopping
        );
        admin_stop.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("asap-proxy stopped");
        Ok(())
    })
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: ok", path.display())?;
    if let Some(listen) = config.listen {
        writeln!(out, "forward listener  {listen}")?;
    }
    for r in &config.reverse {
        writeln!(out, "reverse listener  {} -> {}", r.listen, r.upstream)?;
    }
    let unmatched = match config.unmatched {
        config::Unmatched::Deny => "deny (403)",
        config::Unmatched::Forward => "forward without a token",
    };
    writeln!(out, "unmatched hosts   {unmatched}")?;
    let ports: Vec<String> = config.connect_ports.iter().map(u16::to_string).collect();
    writeln!(out, "CONNECT ports     {}", ports.join(", "))?;
    match &config.intercept {
        Some(ca) => writeln!(out, "TLS interception  on, CA {}", ca.subject())?,
        None => writeln!(
            out,
            "TLS interception  off (CONNECT to routed hosts is refused)"
        )?,
    }
    writeln!(out, "routes:")?;
    for (rule, route) in config.routes.iter() {
        let spec = route.minter.spec();
        writeln!(
            out,
            "  [{}] {rule}{}\n      aud={} iss={} sub={} kid={} alg={} key={} expiry={}s reuse={}",
            route.index,
            if route.upstream_tls {
                " (upstream over TLS)"
            } else {
                ""
            },
            spec.audience().as_slice().join(","),
            spec.issuer(),
            spec.subject(),
            spec.kid(),
            spec.algorithm(),
            spec.key().kind(),
            spec.lifetime().as_secs(),
            route.minter.reuse(),
        )?;
    }
    Ok(())
}

fn print_token(path: &Path, url: &str) -> anyhow::Result<()> {
    let config = load(path)?;
    let uri: http::Uri = url.parse().context("not a URL")?;
    let origin = Origin::from_uri(&uri).with_context(|| format!("{url} is not a usable URL"))?;
    let route = config
        .routes
        .find(&origin.host, origin.port, uri.path())
        .with_context(|| format!("no route matches {origin}{}", uri.path()))?;
    let token = token::mint(route.minter.spec(), SystemTime::now())?;
    println!("{}", token.as_str());
    Ok(())
}

fn keygen(algorithm: Algorithm, kid: &str, out: &Path) -> anyhow::Result<()> {
    let issuer = kid.split('/').next().unwrap_or_default();
    let kid = KeyId::new(kid, issuer).map_err(|e| anyhow::anyhow!("--kid: {e}"))?;
    let key = SigningKey::generate(algorithm)?;
    // A kid that ends in .pem already names its file, as in ASAP tooling's key directories.
    let private_name = if kid.as_str().ends_with(".pem") {
        kid.to_string()
    } else {
        format!("{kid}.pem")
    };
    let private_path = out.join("private").join(private_name);
    let public_path = out.join("public").join(kid.as_str());
    for path in [&private_path, &public_path] {
        if path.exists() {
            bail!("{} already exists; not overwriting a key", path.display());
        }
    }
    write_file(&private_path, key.to_pkcs8_pem()?.as_bytes(), 0o600)?;
    write_file(&public_path, key.public_key_pem().as_bytes(), 0o644)?;
    println!("private key: {}", private_path.display());
    println!(
        "public key:  {}  (publish it in the key repository as {kid})",
        public_path.display()
    );
    println!(
        "\nasap:\n  issuer: {issuer}\n  kid: {kid}\n  algorithm: {algorithm}\n  private_key_file: {}",
        private_path.display()
    );
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn public_keys(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    // One entry per kid, however many routes share the key.
    let mut keys = BTreeMap::new();
    for (_, route) in config.routes.iter() {
        let spec = route.minter.spec();
        keys.entry(spec.kid().to_string())
            .or_insert_with(|| spec.key().public_key_pem());
    }
    for (kid, pem) in keys {
        println!("# kid: {kid}\n{pem}");
    }
    Ok(())
}

fn ca_init(out: &Path) -> anyhow::Result<()> {
    let cert_path = out.join("asap-proxy-ca.pem");
    let key_path = out.join("asap-proxy-ca-key.pem");
    for path in [&cert_path, &key_path] {
        if path.exists() {
            bail!("{} already exists; not overwriting a CA", path.display());
        }
    }
    let (cert, key) = intercept::create_ca("asap-proxy interception CA")?;
    write_file(&key_path, key.as_bytes(), 0o600)?;
    write_file(&cert_path, cert.as_bytes(), 0o644)?;
    let cert = cert_path.display();
    println!(
        "CA certificate: {cert}
CA key:         {}  (keep it secret: whoever holds it can impersonate any site to
                clients that trust the certificate)

Configure the proxy:

  intercept:
    ca_cert_file: {cert}
    ca_key_file: {}

Make each client trust the certificate (only clients that use this proxy):

  curl                curl --cacert {cert} ...        (or CURL_CA_BUNDLE={cert})
  Python requests     REQUESTS_CA_BUNDLE={cert}
  Python ssl, OpenSSL SSL_CERT_FILE={cert}
                      (both replace the default roots: to keep them, point the variable at a
                      file holding the system bundle followed by this certificate)
  Node.js             NODE_EXTRA_CA_CERTS={cert}
  Java                keytool -importcert -cacerts -alias asap-proxy -file {cert}
  Debian, Ubuntu      cp {cert} /usr/local/share/ca-certificates/asap-proxy-ca.crt
                      && update-ca-certificates
  RHEL, Fedora        cp {cert} /etc/pki/ca-trust/source/anchors/ && update-ca-trust",
        key_path.display(),
        key_path.display(),
    );
    Ok(())
}

/// The configuration the environment describes, as YAML, so that it goes through the same
/// checks as a file. The key itself stays in the environment.
fn env_config(env: &EnvConfig) -> anyhow::Result<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // JSON strings are YAML strings, with every character escaped as needed.
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let issuer = var("ASAP_ISSUER").context("ASAP_ISSUER is not set")?;
    let key = var("ASAP_PRIVATE_KEY").context("ASAP_PRIVATE_KEY is not set")?;
    let algorithm = match var("ASAP_ALGORITHM") {
        Some(algorithm) => algorithm,
        None => match SigningKey::parse(&key)
            .context("ASAP_PRIVATE_KEY")?
            .key
            .kind()
        {
            token::KeyKind::Rsa { .. } => "RS256".to_owned(),
            token::KeyKind::EcP256 => "ES256".to_owned(),
            token::KeyKind::EcP384 => "ES384".to_owned(),
            token::KeyKind::EcP521 => "ES512".to_owned(),
        },
    };
    let mut yaml = format!("listen: {}\n", quote(&env.listen));
    if let Some(admin) = &env.admin {
        yaml.push_str(&format!("admin: {}\nadmin_expose: true\n", quote(admin)));
    }
    if !env.allow.is_empty() {
        let allow: Vec<String> = env.allow.iter().map(|c| quote(c)).collect();
        yaml.push_str(&format!("clients:\n  allow: [{}]\n", allow.join(", ")));
    }
    yaml.push_str(&format!(
        "asap:\n  issuer: {}\n  algorithm: {}\n  private_key_env: ASAP_PRIVATE_KEY\n",
        quote(&issuer),
        quote(&algorithm)
    ));
    if let Some(kid) = var("ASAP_KEY_ID") {
        yaml.push_str(&format!("  kid: {}\n", quote(&kid)));
    }
    yaml.push_str("routes:\n");
    for route in &env.routes {
        let (host, audience) = match route.split_once('=') {
            Some((host, audience)) => (host, audience.to_owned()),
            None => (
                route.as_str(),
                var("ASAP_AUDIENCE").with_context(|| {
                    format!("--route {route}: no audience after = and ASAP_AUDIENCE is not set")
                })?,
            ),
        };
        yaml.push_str(&format!(
            "  - host: {}\n    audience: {}\n",
            quote(host),
            quote(&audience)
        ));
    }
    Ok(yaml)
}
