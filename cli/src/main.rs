//! `cofferctl`: the operator's tool.
//!
//! Exit codes: 0 success, 1 failure (or a rejected token, a denied policy
//! check, a broken audit chain), 2 usage error (or an invalid policy).

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use coffer::{Client, SecretBytes, SecretData, TokenSource};
use coffer_broker::{
    audit,
    auth::{
        WorkloadIdentity,
        jwt::{KeySet, VerifierConfig, verify_with},
    },
    path::SecretPath,
    policy::{Capability, Policy},
};
use zeroize::Zeroizing;

/// `println!` that does not panic when stdout is closed (`cofferctl ... | head`):
/// a reader that went away is not an error worth a backtrace.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(name = "cofferctl", version, about = "Operate Coffer")]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the broker; accepted before or after the subcommand.
#[derive(clap::Args)]
struct BrokerArgs {
    /// The broker: https://host:port, http://127.0.0.1:port or unix:/path.
    #[arg(long, env = "COFFER_BROKER", global = true)]
    broker: Option<String>,
    /// The operator's token file.
    #[arg(long, env = "COFFER_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// CA bundle (PEM) for the broker's certificate.
    #[arg(long, env = "COFFER_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new version, reading the value from stdin.
    Put {
        path: String,
        /// Content type hint.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Write only if the current version is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Print a secret's value to stdout. On a terminal, a value with control
    /// characters or bytes that are not UTF-8 is refused (they could drive
    /// the terminal) unless --raw is given; pipes and files get the bytes.
    Get {
        path: String,
        #[arg(long)]
        version: Option<u64>,
        /// Write the bytes to a terminal even if they hold control characters.
        #[arg(long)]
        raw: bool,
    },
    /// List a secret's versions.
    Versions { path: String },
    /// Make an old version current again.
    Rollback { path: String, to_version: u64 },
    /// Show which workloads hold which version.
    Status { path: String },
    /// Token debugging.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check and lint policy files, offline.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Inspect the broker's audit trail, offline.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// May this workload do this? Prints allow or deny and the deciding rule;
    /// exits 0 on allow, 1 on deny, 2 on a usage error or an invalid policy.
    Check {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// The pod name, for rules with a podNamePrefix.
        #[arg(long)]
        pod: Option<String>,
        /// The token issuer, for subjects that name one.
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        path: String,
        /// read, watch, write, rotate, rollback, list or status.
        #[arg(long, default_value = "read", value_parser = parse_capability)]
        capability: Capability,
    },
    /// Validate a policy file and report risky breadth. Exits 0 when valid,
    /// 1 when invalid (or, with --strict, when there are warnings).
    Lint {
        file: PathBuf,
        /// Treat warnings as failures.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files given oldest first
    /// (e.g. `audit.log.* audit.log`); names the first broken record. A
    /// trail whose oldest files were pruned starts at its first record.
    /// Exits 0 when intact, 1 when broken, 2 when a file cannot be read.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The broker's --audit-hmac-key-file: check an HMAC-linked chain.
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
    },
}

fn parse_capability(name: &str) -> Result<Capability, String> {
    Capability::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        format!("unknown capability {name:?}; one of {}", all.join(", "))
    })
}

fn policy_command(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check {
            policy,
            namespace,
            service_account,
            pod,
            issuer,
            path,
            capability,
        } => {
            let policy = match Policy::load(&policy) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("cofferctl: {}: {e}", policy.display());
                    return ExitCode::from(2);
                }
            };
            let path = match SecretPath::parse(&path) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("cofferctl: invalid path {path:?}: {e}");
                    return ExitCode::from(2);
                }
            };
            let who = WorkloadIdentity {
                issuer: issuer.unwrap_or_default(),
                namespace,
                service_account,
                service_account_uid: None,
                pod_name: pod,
                pod_uid: None,
            };
            let decision = policy.decide(&who, &path, capability);
            say!("{decision}");
            if decision.is_allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        PolicyCommand::Lint { file, strict } => match Policy::load(&file) {
            Err(e) => {
                say!("{}: {e}", file.display());
                ExitCode::from(1)
            }
            Ok(policy) => {
                let warnings = policy.warnings();
                for w in &warnings {
                    say!("{}: warning: {w}", file.display());
                }
                say!(
                    "{}: valid, {} rules, {} warnings",
                    file.display(),
                    policy.rules().len(),
                    warnings.len()
                );
                if strict && !warnings.is_empty() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
        },
    }
}

fn audit_command(command: AuditCommand) -> ExitCode {
    let AuditCommand::Verify {
        files,
        hmac_key_file,
    } = command;
    let key = match &hmac_key_file {
        None => None,
        Some(file) => match std::fs::read(file) {
            Ok(bytes) => Some(zeroize::Zeroizing::new(bytes)),
            Err(e) => {
                eprintln!("cofferctl: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
    };
    let mut contents = Vec::with_capacity(files.len());
    for file in &files {
        match std::fs::read(file) {
            Ok(bytes) => contents.push((file.display().to_string(), bytes)),
            Err(e) => {
                eprintln!("cofferctl: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    match audit::verify_keyed(
        contents.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
        key.as_deref().map(Vec::as_slice),
    ) {
        Ok(summary) => {
            say!(
                "intact: {} records from seq {}; last record hash {}",
                summary.records,
                summary
                    .first_seq
                    .map_or_else(|| "-".to_string(), |s| s.to_string()),
                summary.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(broken) => {
            say!("BROKEN at {broken}");
            ExitCode::from(1)
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Verify a token (read from stdin) exactly as the broker does. Prints
    /// the identity, or the precise reason for rejection. Exits 0 for a
    /// valid token, 1 for a rejected one, 2 for a usage error.
    Verify {
        /// The issuer's JWKS (e.g. `kubectl get --raw /openid/v1/jwks`).
        #[arg(long)]
        jwks: PathBuf,
        /// The exact `iss` expected.
        #[arg(long)]
        issuer: String,
        /// The audience the token must carry.
        #[arg(long)]
        audience: String,
        /// Clock skew tolerated on exp, nbf and iat, in seconds.
        #[arg(long, default_value_t = 30)]
        leeway: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cofferctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli.broker, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cofferctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &BrokerArgs) -> anyhow::Result<Client> {
    let (Some(endpoint), Some(token_file)) = (&args.broker, &args.token_file) else {
        anyhow::bail!(
            "--broker and --token-file (or COFFER_BROKER and COFFER_TOKEN_FILE) are required"
        );
    };
    let mut builder = Client::builder(endpoint.clone())
        .token(TokenSource::file(token_file))
        .timeout(Duration::from_secs(30));
    if let Some(ca) = &args.ca_file {
        builder =
            builder.ca_pem(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
    }
    Ok(builder.connect().await?)
}

async fn run(broker: &BrokerArgs, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Policy { command } => return Ok(policy_command(command)),
        Command::Audit { command } => return Ok(audit_command(command)),
        Command::Put {
            path,
            content_type,
            cas,
        } => {
            let mut value = Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut value)?;
            let data = SecretData::Bytes(SecretBytes::new(std::mem::take(&mut *value)));
            let version = client(broker)
                .await?
                .put(&path, data, &content_type, cas)
                .await?;
            say!("{path}: version {version}");
        }
        Command::Get { path, version, raw } => {
            let secret = client(broker).await?.get_version(&path, version).await?;
            let mut text = Zeroizing::new(Vec::new());
            match secret.data() {
                SecretData::Bytes(b) => text.extend_from_slice(b.expose()),
                SecretData::Map(map) => {
                    for (k, v) in map {
                        text.extend_from_slice(k.as_bytes());
                        text.push(b'=');
                        text.extend_from_slice(v.expose());
                        text.push(b'\n');
                    }
                }
            }
            let mut out = std::io::stdout().lock();
            if !raw && std::io::IsTerminal::is_terminal(&out) && !terminal_safe(&text) {
                eprintln!(
                    "cofferctl: {path} holds control characters or non-UTF-8 bytes; refusing to \
                     write them to a terminal (use --raw, or redirect to a file or pipe)"
                );
                return Ok(ExitCode::FAILURE);
            }
            out.write_all(&text)?;
        }
        Command::Versions { path } => {
            let list = client(broker).await?.list_versions(&path).await?;
            say!("current version: {}", list.current_version);
            for v in list.versions {
                let state = if v.destroyed {
                    "destroyed"
                } else if v.deleted {
                    "deleted"
                } else {
                    "live"
                };
                say!(
                    "  v{:<6} {state}  created {}",
                    v.version,
                    timestamp(v.created_at)
                );
            }
        }
        Command::Rollback { path, to_version } => {
            let version = client(broker).await?.rollback(&path, to_version).await?;
            say!("{path}: version {to_version} is current again as version {version}");
        }
        Command::Status { path } => {
            let status = client(broker).await?.rotation_status(&path).await?;
            say!("current version: {}", status.current_version);
            for w in status.workloads {
                let state = match coffer::proto::ApplyState::try_from(w.state) {
                    Ok(coffer::proto::ApplyState::Applied) => "applied",
                    Ok(coffer::proto::ApplyState::Failed) => "FAILED",
                    _ => "unknown",
                };
                say!(
                    "  {}/{} pod={} version={} {} at {}",
                    w.namespace,
                    w.service_account,
                    if w.pod.is_empty() { "-" } else { &w.pod },
                    w.version,
                    state,
                    timestamp(w.acknowledged_at)
                );
            }
        }
        Command::Token {
            command:
                TokenCommand::Verify {
                    jwks,
                    issuer,
                    audience,
                    leeway,
                },
        } => {
            let keys = match std::fs::read(&jwks)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(KeySet::from_jwks_json(&b)?))
            {
                Ok(keys) => keys,
                Err(e) => {
                    eprintln!("cofferctl: {}: {e:#}", jwks.display());
                    return Ok(ExitCode::from(2));
                }
            };
            let mut token = Zeroizing::new(String::new());
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("cofferctl: cannot read the token from stdin: {e}");
                return Ok(ExitCode::from(2));
            }
            if token.trim().is_empty() {
                eprintln!("cofferctl: no token on stdin");
                return Ok(ExitCode::from(2));
            }
            let mut config = VerifierConfig::new(issuer, audience);
            config.leeway = Duration::from_secs(leeway);
            return Ok(match verify_with(&config, &keys, token.trim()) {
                Ok(id) => {
                    say!("valid: {}", id.subject());
                    say!("  namespace:       {}", id.namespace);
                    say!(
                        "  service account: {} (uid {})",
                        id.service_account,
                        id.service_account_uid.as_deref().unwrap_or("-")
                    );
                    say!(
                        "  pod:             {} (uid {})",
                        id.pod_name.as_deref().unwrap_or("-"),
                        id.pod_uid.as_deref().unwrap_or("-")
                    );
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    say!("rejected: {reason} ({})", reason.reason());
                    ExitCode::from(1)
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `bytes` can go to a terminal without driving it: valid UTF-8
/// with no control characters but newline and tab (no ESC sequences, no
/// C1 controls such as CSI), and no bidirectional overrides that reorder
/// what is shown.
fn terminal_safe(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.chars().all(|c| {
        (!c.is_control() || c == '\n' || c == '\t')
            && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

fn timestamp<T>(t: Option<T>) -> String
where
    std::time::SystemTime: TryFrom<T>,
{
    t.and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map_or_else(
            || "-".to_string(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_safe_refuses_escapes_controls_and_binary() {
        assert!(terminal_safe(b"p@ss w0rd\nsecond line\tx\n"));
        assert!(terminal_safe("naïve ☕ 😀".as_bytes()));
        for bad in [
            &b"\x1b]0;pwned\x07"[..],
            b"\x1b[2J",
            b"a\rb",
            b"nul\0",
            b"del\x7f",
            "c1\u{9b}31m".as_bytes(),
            "rlo\u{202e}txt".as_bytes(),
            b"\xff\xfe",
        ] {
            assert!(!terminal_safe(bad), "{bad:?}");
        }
    }
}
