//! `cofferctl`: the operator's tool.
//!
//! Exit codes by category ([`EXIT_CODES`], also in `--help` and
//! docs/cli.md): 0 success, 1 failure (or a rejected token, a denied policy
//! check, a broken audit chain, an unfinished rollout), 2 usage error (or an
//! invalid policy), 3 not found, 4 permission denied, 5 unauthenticated,
//! 6 unavailable.

use std::{
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use coffer::{Client, SecretBytes, SecretData, TokenSource};
use coffer_broker::{
    audit,
    auth::WorkloadIdentity,
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

mod console;
mod token;
/// The exit codes, shown at the end of `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: a denied policy check, a rejected token, a broken audit chain,
     a rollout not (yet) applied everywhere, any other error
  2  usage error: bad arguments, an invalid policy or input
  3  not found: the secret or version does not exist
  4  permission denied: the policy does not allow it
  5  unauthenticated: the token is missing, unreadable, expired or refused
  6  unavailable: the broker or its secret backend cannot be reached";

const EXIT_NOT_FOUND: u8 = 3;
const EXIT_PERMISSION_DENIED: u8 = 4;
const EXIT_UNAUTHENTICATED: u8 = 5;
const EXIT_UNAVAILABLE: u8 = 6;
const EXIT_USAGE: u8 = 2;

/// `--version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("COFFER_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "cofferctl",
    version = VERSION,
    about = "Operate Coffer",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Output format: text for people, json (one object per result) for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Connection flags before the subcommand (`cofferctl --broker X put
    /// ...`, as kubectl and vault take them); the subcommand's own win.
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: Command,
}

/// The connection flags given before the subcommand, set once in `main`.
static LEADING_BROKER_ARGS: std::sync::OnceLock<BrokerArgs> = std::sync::OnceLock::new();

/// `--output`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The `--output` chosen, set once in `main`.
static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// Whether results are printed as JSON.
fn json_output() -> bool {
    OUTPUT.get() == Some(&Output::Json)
}

/// How to reach the broker: only the commands that talk to it take these.
#[derive(clap::Args, Debug, Clone)]
struct BrokerArgs {
    /// The broker: https://host:port, http://127.0.0.1:port or unix:/path.
    #[arg(long, env = "COFFER_BROKER")]
    broker: Option<String>,
    /// The operator's token file.
    #[arg(long, env = "COFFER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA bundle (PEM) for the broker's certificate.
    #[arg(long, env = "COFFER_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// A usage error found after parsing (exit 2).
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code of a failed command, by category.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return EXIT_USAGE;
    }
    let Some(error) = error.downcast_ref::<coffer::Error>() else {
        return 1;
    };
    if let coffer::Error::Token { .. } = error {
        return EXIT_UNAUTHENTICATED;
    }
    match error.code() {
        Some(coffer::Code::NotFound) => EXIT_NOT_FOUND,
        Some(coffer::Code::PermissionDenied) => EXIT_PERMISSION_DENIED,
        Some(coffer::Code::Unauthenticated) => EXIT_UNAUTHENTICATED,
        Some(coffer::Code::Unavailable | coffer::Code::DeadlineExceeded) => EXIT_UNAVAILABLE,
        Some(coffer::Code::InvalidArgument) => EXIT_USAGE,
        _ => 1,
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a new version: a map from KEY=VALUE pairs, --from-file or
    /// --json, or else the bytes on stdin.
    ///
    /// Values given as KEY=VALUE are visible in the process list and shell
    /// history: prefer --from-file KEY=FILE or stdin for real secrets. A map
    /// write replaces the whole secret. Stdin bytes are written as they are,
    /// except that one trailing newline is dropped when stdin is a terminal
    /// (--strip-newline / --keep-newline decide either way).
    #[command(verbatim_doc_comment)]
    Put {
        /// The secret's path, e.g. `shop/db`.
        path: String,
        /// KEY=VALUE pairs of a map secret.
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// A key whose value is a file's bytes (repeatable).
        #[arg(long, value_name = "KEY=FILE")]
        from_file: Vec<String>,
        /// Read a JSON object of string values from stdin: a map secret.
        #[arg(long, conflicts_with_all = ["pairs", "from_file"])]
        json: bool,
        /// Drop one trailing newline from stdin bytes.
        #[arg(long, conflicts_with = "keep_newline")]
        strip_newline: bool,
        /// Keep stdin bytes exactly, even from a terminal.
        #[arg(long)]
        keep_newline: bool,
        /// Content type hint.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Write only if the current version is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Have the broker generate a new value (capability `rotate`). Unset
    /// options come from the spec stored with the secret (labels
    /// `coffer.rotate/*`), then the defaults: 32 characters of [A-Za-z0-9].
    /// A spec given here is stored for the next rotation.
    Rotate {
        /// The secret's path, e.g. `shop/db`.
        path: String,
        /// For a map secret: the key to rotate; the other keys are kept.
        #[arg(long)]
        key: Option<String>,
        /// Characters to generate (bytes for hex and base64).
        #[arg(long)]
        length: Option<u32>,
        /// The characters to draw from.
        #[arg(long)]
        alphabet: Option<String>,
        /// chars (default), hex or base64.
        #[arg(long)]
        encoding: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Print a secret's value to stdout. On a terminal, a value with control
    /// characters or bytes that are not UTF-8 is refused (they could drive
    /// the terminal) unless --raw is given; pipes and files get the bytes.
    Get {
        /// The secret's path; `path#key` for one key of a map secret.
        path: String,
        /// An older version instead of the current one.
        #[arg(long)]
        version: Option<u64>,
        /// Write the bytes to a terminal even if they hold control characters.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// List a secret's versions.
    Versions {
        /// The secret's path.
        path: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Soft-delete versions (capability `delete`); `undelete` restores them.
    Delete {
        /// The secret's path.
        path: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Comma-separated versions; default: the current one.
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Restore soft-deleted versions (capability `delete`).
    Undelete {
        /// The secret's path.
        path: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Comma-separated versions; default: the current one.
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Destroy versions for good (capability `destroy`).
    Destroy {
        /// The secret's path.
        path: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Comma-separated versions (required: destroying is final).
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// List the secrets under a folder that you may list (capability `list`
    /// on each name); folders end with `/`.
    List {
        /// The folder, e.g. `shop`; default: the top.
        #[arg(default_value = "")]
        folder: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Make an old version current again (as a new version).
    Rollback {
        /// The secret's path.
        path: String,
        /// The version whose value becomes current again.
        to_version: u64,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Show the rollout of the current version: how many of the workloads
    /// watching the path applied it (N/M), then one line per workload.
    /// Exits 0 when every watcher applied it, 1 when any failed or is pending.
    Status {
        /// The secret's path.
        path: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// List the live leases of dynamic secrets (database credentials,
    /// certificates) on the broker connected: lease id, path, owner,
    /// version, expiry and renewal state. Only leases of paths you may list
    /// (capability `list`); at most 1,000 (a note on stderr says when more
    /// matched).
    Leases {
        /// Only leases of this path and the paths under it, e.g. `shop`.
        #[arg(long)]
        path: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Revoke one lease now (capability `revoke` on its path): the database
    /// user is dropped and the pod holding it gets a new credential.
    /// Exits 3 when no live lease has this id.
    Revoke {
        /// The lease id, as `cofferctl leases` shows it.
        lease_id: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Print a shell completion script: `source <(cofferctl completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Token debugging, offline.
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
    /// A local web view of secrets, versions and live rollouts, with Rotate
    /// and Rollback (see docs/console.md).
    Console {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        args: console::ConsoleArgs,
    },
}

/// `--wait`: follow the rollout until every watcher applied the new version.
#[derive(clap::Args)]
struct WaitArgs {
    /// Show a progress bar until every workload watching the path applied
    /// the new version; exit 1 when any failed or the timeout passed.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, requires = "wait")]
    timeout: Duration,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// May this workload do this? Prints allow or deny and the deciding rule;
    /// exits 0 on allow, 1 on deny, 2 on a usage error or an invalid policy.
    Check {
        /// The policy file (YAML).
        #[arg(long)]
        policy: PathBuf,
        /// The workload's namespace.
        #[arg(long)]
        namespace: String,
        /// The workload's service account.
        #[arg(long)]
        service_account: String,
        /// The pod name, for rules with a podNamePrefix.
        #[arg(long)]
        pod: Option<String>,
        /// The token issuer, for subjects that name one.
        #[arg(long)]
        issuer: Option<String>,
        /// The secret path asked for.
        #[arg(long)]
        path: String,
        /// read, watch, write, rotate, rollback, list, status, delete or destroy.
        #[arg(long, default_value = "read", value_parser = parse_capability)]
        capability: Capability,
    },
    /// Validate a policy file and report risky breadth. Exits 0 when valid,
    /// 1 when invalid (or, with --strict, when there are warnings).
    Lint {
        /// The policy file (YAML).
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
        /// The audit files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The broker's --audit-hmac-key-file: check an HMAC-linked chain.
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// NEXT_SEQ:LAST_HASH known from outside the files: the `anchor` of
        /// the broker's `audit chain head` log line (logged when it opens
        /// the trail, periodically and at shutdown) or the anchor a previous
        /// verify printed. Records cut off the trail's start or end are then
        /// reported; without it a trail whose first records were cut
        /// verifies from its first remaining record.
        #[arg(long)]
        anchor: Option<audit::Anchor>,
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
            if json_output() {
                say!(
                    "{}",
                    serde_json::json!({"allowed": decision.is_allowed(), "decision": decision.to_string()})
                );
            } else {
                say!("{decision}");
            }
            if decision.is_allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        PolicyCommand::Lint { file, strict } => match Policy::load(&file) {
            Err(e) if json_output() => {
                say!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "valid": false, "error": e.to_string()})
                );
                ExitCode::from(1)
            }
            Err(e) => {
                say!("{}: {e}", file.display());
                ExitCode::from(1)
            }
            Ok(policy) if json_output() => {
                let warnings: Vec<String> =
                    policy.warnings().iter().map(ToString::to_string).collect();
                let failed = strict && !warnings.is_empty();
                say!(
                    "{}",
                    serde_json::json!({
                        "file": file.display().to_string(),
                        "valid": true,
                        "rules": policy.rules().len(),
                        "warnings": warnings,
                    })
                );
                if failed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
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
        anchor,
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
    let files = contents.iter().map(|(n, b)| (n.as_str(), b.as_slice()));
    let key = key.as_deref().map(Vec::as_slice);
    let verified = match &anchor {
        Some(anchor) => audit::verify_anchored(files, key, anchor),
        None => audit::verify_keyed(files, key),
    };
    match verified {
        Ok(summary) if json_output() => {
            say!(
                "{}",
                serde_json::json!({
                    "intact": true,
                    "records": summary.records,
                    "firstSeq": summary.first_seq,
                    "lastHash": summary.last_hash.to_string(),
                    "anchored": summary.anchored,
                    "nextAnchor": summary.next_anchor().to_string(),
                })
            );
            ExitCode::SUCCESS
        }
        Err(broken) if json_output() => {
            say!(
                "{}",
                serde_json::json!({"intact": false, "brokenAt": broken.to_string()})
            );
            ExitCode::from(1)
        }
        Ok(summary) => {
            say!(
                "intact: {} records from seq {}; last record hash {}",
                summary.records,
                summary
                    .first_seq
                    .map_or_else(|| "-".to_string(), |s| s.to_string()),
                summary.last_hash
            );
            if summary.anchored {
                say!("anchored: the chain passes through the given anchor");
            } else if summary.first_seq.is_some_and(|first| first > 0) {
                say!(
                    "NOT ANCHORED: the trail starts at seq {}; records before it were pruned or cut. \
                     Give --anchor NEXT_SEQ:LAST_HASH (the broker's `audit chain head` log line) to tell which.",
                    summary.first_seq.unwrap_or_default()
                );
            }
            say!(
                "next anchor: {} (keep it elsewhere; the next verify takes it as --anchor)",
                summary.next_anchor()
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
    let _ = OUTPUT.set(cli.output);
    let _ = LEADING_BROKER_ARGS.set(cli.broker);
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
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cofferctl: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn client(args: &BrokerArgs) -> anyhow::Result<Client> {
    let leading = LEADING_BROKER_ARGS.get();
    let args = BrokerArgs {
        broker: args
            .broker
            .clone()
            .or_else(|| leading.and_then(|l| l.broker.clone())),
        token_file: args
            .token_file
            .clone()
            .or_else(|| leading.and_then(|l| l.token_file.clone())),
        ca_file: args
            .ca_file
            .clone()
            .or_else(|| leading.and_then(|l| l.ca_file.clone())),
    };
    let (Some(endpoint), Some(token_file)) = (&args.broker, &args.token_file) else {
        return Err(UsageError(
            "--broker and --token-file (or COFFER_BROKER and COFFER_TOKEN_FILE) are required"
                .into(),
        )
        .into());
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

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Policy { command } => return Ok(policy_command(command)),
        Command::Audit { command } => return Ok(audit_command(command)),
        Command::Console { broker, args } => {
            return console::run(client(&broker).await?, args).await;
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cofferctl",
                &mut std::io::stdout(),
            );
        }
        Command::Put {
            path,
            pairs,
            from_file,
            json,
            strip_newline,
            keep_newline,
            content_type,
            cas,
            wait,
            broker,
        } => {
            let data = if json {
                let mut text = Zeroizing::new(Vec::new());
                std::io::stdin().read_to_end(&mut text)?;
                json_map(&text)?
            } else if !pairs.is_empty() || !from_file.is_empty() {
                pair_map(&pairs, &from_file)?
            } else {
                let mut value = Zeroizing::new(Vec::new());
                std::io::stdin().read_to_end(&mut value)?;
                let strip = strip_newline || (!keep_newline && std::io::stdin().is_terminal());
                if strip && value.last() == Some(&b'\n') {
                    value.pop();
                    if value.last() == Some(&b'\r') {
                        value.pop();
                    }
                }
                SecretData::Bytes(SecretBytes::new(std::mem::take(&mut *value)))
            };
            let client = client(&broker).await?;
            let put = coffer::Put::new(&path, data)
                .content_type(content_type)
                .cas(cas);
            let version = client.put(put).await?;
            if json_output() {
                say!("{}", serde_json::json!({"path": path, "version": version}));
            } else {
                say!("{path}: version {version}");
            }
            if wait.wait {
                return wait_for_rollout(&client, &path, version, wait.timeout).await;
            }
        }
        Command::Rotate {
            path,
            key,
            length,
            alphabet,
            encoding,
            wait,
            broker,
        } => {
            let mut rotate = coffer::Rotate::new(&path);
            if let Some(length) = length {
                rotate = rotate.length(length);
            }
            if let Some(alphabet) = alphabet {
                rotate = rotate.alphabet(alphabet);
            }
            if let Some(encoding) = encoding {
                rotate = rotate.encoding(encoding.parse()?);
            }
            if let Some(key) = key {
                rotate = rotate.key(key);
            }
            let client = client(&broker).await?;
            let coffer::Rotated { version, key, .. } = client.rotate_detailed(rotate).await?;
            if json_output() {
                say!(
                    "{}",
                    serde_json::json!({"path": path, "version": version, "key": key})
                );
            } else {
                // Which key changed, so an operator sees at once whether the
                // value they meant to replace was replaced.
                match &key {
                    Some(key) => say!("{path}: rotated to version {version} (key {key})"),
                    None => say!("{path}: rotated to version {version} (the whole value)"),
                }
            }
            if wait.wait {
                return wait_for_rollout(&client, &path, version, wait.timeout).await;
            }
        }
        Command::Get {
            path,
            version,
            raw,
            broker,
        } => {
            let secret = client(&broker).await?.get_version(&path, version).await?;
            if json_output() {
                return get_json(&path, &secret);
            }
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
        Command::Versions { path, broker } => {
            let list = client(&broker).await?.versions(&path).await?;
            if json_output() {
                let versions: Vec<serde_json::Value> = list
                    .versions
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.version,
                            "deleted": v.state == coffer::VersionState::Deleted,
                            "destroyed": v.state == coffer::VersionState::Destroyed,
                            "createdAt": timestamp(v.created_at),
                        })
                    })
                    .collect();
                say!(
                    "{}",
                    serde_json::json!({
                        "path": path,
                        "currentVersion": list.current,
                        "versions": versions,
                    })
                );
                return Ok(ExitCode::SUCCESS);
            }
            say!("current version: {}", list.current);
            for v in list.versions {
                let state = match v.state {
                    coffer::VersionState::Destroyed => "destroyed",
                    coffer::VersionState::Deleted => "deleted",
                    _ => "live",
                };
                say!(
                    "  v{:<6} {state}  created {}",
                    v.version,
                    timestamp(v.created_at)
                );
            }
        }
        Command::Delete {
            path,
            versions,
            broker,
        } => {
            change_versions(
                &broker,
                coffer::VersionAction::Delete,
                &path,
                versions,
                "deleted",
            )
            .await?;
        }
        Command::Undelete {
            path,
            versions,
            broker,
        } => {
            change_versions(
                &broker,
                coffer::VersionAction::Undelete,
                &path,
                versions,
                "undeleted",
            )
            .await?;
        }
        Command::Destroy {
            path,
            versions,
            broker,
        } => {
            change_versions(
                &broker,
                coffer::VersionAction::Destroy,
                &path,
                versions,
                "destroyed",
            )
            .await?;
        }
        Command::List { folder, broker } => {
            let names = client(&broker).await?.list_secrets(&folder).await?;
            if json_output() {
                say!("{}", serde_json::json!({"folder": folder, "names": names}));
            } else {
                for name in names {
                    say!("{name}");
                }
            }
        }
        Command::Rollback {
            path,
            to_version,
            broker,
        } => {
            let client = client(&broker).await?;
            let version = match client.rollback(&path, to_version).await {
                Ok(version) => version,
                Err(error) if error.code() == Some(coffer::Code::NotFound) => {
                    return Err(missing_version(&client, &path, to_version, error).await);
                }
                Err(error) => return Err(error.into()),
            };
            if json_output() {
                say!(
                    "{}",
                    serde_json::json!({"path": path, "fromVersion": to_version, "version": version})
                );
            } else {
                say!("{path}: version {to_version} is current again as version {version}");
            }
        }
        Command::Status { path, broker } => {
            let status = client(&broker).await?.status(&path).await?;
            if json_output() {
                say!("{}", status_json(&path, &status));
            } else {
                print_status(&path, &status);
            }
            let done = status.failed == 0 && status.pending == 0;
            return Ok(if done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Leases { path, broker } => {
            let list = client(&broker).await?.leases(path.as_deref()).await?;
            if json_output() {
                let leases: Vec<serde_json::Value> = list.leases.iter().map(lease_json).collect();
                say!(
                    "{}",
                    serde_json::json!({"leases": leases, "truncated": list.truncated})
                );
            } else {
                print_leases(&list);
            }
            if list.truncated {
                eprintln!("more leases matched than one answer holds: narrow --path");
            }
        }
        Command::Revoke { lease_id, broker } => {
            let revoked = client(&broker).await?.revoke_lease(&lease_id).await?;
            if json_output() {
                say!("{}", serde_json::json!({"revoked": lease_json(&revoked)}));
            } else {
                say!(
                    "revoked {} ({} v{}, {})",
                    revoked.lease_id,
                    revoked.path,
                    revoked.version,
                    owner_text(&revoked)
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
            return Ok(token::verify(&jwks, issuer, audience, leeway));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `get --output json`: `{"path", "version", "data"}`, where `data` is
/// `{"text": ...}` for a UTF-8 value and `{"base64": ...}` otherwise (a map
/// secret: one such object per key). Written straight into a zeroizing
/// buffer, so no copy of the value outlives the call.
fn get_json(path: &str, secret: &coffer::Secret) -> anyhow::Result<ExitCode> {
    fn value(out: &mut Vec<u8>, bytes: &[u8]) -> anyhow::Result<()> {
        use base64::Engine as _;
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.extend_from_slice(b"{\"text\":");
                serde_json::to_writer(&mut *out, text)?;
            }
            Err(_) => {
                out.extend_from_slice(b"{\"base64\":\"");
                let encoded =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
                out.extend_from_slice(encoded.as_bytes());
                out.push(b'"');
            }
        }
        out.push(b'}');
        Ok(())
    }
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(b"{\"path\":");
    serde_json::to_writer(&mut *out, path)?;
    out.extend_from_slice(format!(",\"version\":{},\"data\":", secret.version()).as_bytes());
    match secret.data() {
        SecretData::Bytes(b) => value(&mut out, b.expose())?,
        SecretData::Map(map) => {
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                value(&mut out, v.expose())?;
            }
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"}\n");
    std::io::stdout().lock().write_all(&out)?;
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

/// `namespace/serviceaccount[/pod]` of a lease's owner.
fn owner_text(lease: &coffer::Lease) -> String {
    let pod = if lease.pod.is_empty() {
        &lease.pod_uid
    } else {
        &lease.pod
    };
    if pod.is_empty() {
        format!("{}/{}", lease.namespace, lease.service_account)
    } else {
        format!("{}/{}/{pod}", lease.namespace, lease.service_account)
    }
}

fn lease_json(lease: &coffer::Lease) -> serde_json::Value {
    let (failing_since, failure_kind) = match &lease.renewal {
        coffer::RenewalState::Failing { since, kind } => (
            serde_json::Value::from(timestamp(*since)),
            serde_json::Value::from(kind.as_str()),
        ),
        _ => (serde_json::Value::Null, serde_json::Value::Null),
    };
    serde_json::json!({
        "leaseId": lease.lease_id,
        "path": lease.path,
        "owner": {
            "issuer": lease.issuer,
            "namespace": lease.namespace,
            "serviceAccount": lease.service_account,
            "pod": lease.pod,
            "podUid": lease.pod_uid,
        },
        "version": lease.version,
        "issuedAt": timestamp(lease.issued_at),
        "expiresAt": timestamp(lease.expires_at),
        "renewal": lease.renewal.as_str(),
        "failingSince": failing_since,
        "failureKind": failure_kind,
    })
}

fn print_leases(list: &coffer::Leases) {
    if list.leases.is_empty() {
        say!("no live leases");
        return;
    }
    say!(
        "{:<48} {:<20} {:<32} {:>4}  {:<20}  RENEWAL",
        "LEASE ID",
        "PATH",
        "OWNER",
        "VER",
        "EXPIRES"
    );
    for lease in &list.leases {
        let renewal = match &lease.renewal {
            coffer::RenewalState::Failing { since, kind } => {
                format!("failing since {} ({kind})", timestamp(*since))
            }
            other => other.as_str().to_string(),
        };
        say!(
            "{:<48} {:<20} {:<32} {:>4}  {:<20}  {renewal}",
            lease.lease_id,
            lease.path,
            owner_text(lease),
            lease.version,
            timestamp(lease.expires_at)
        );
    }
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

/// A map secret from `KEY=VALUE` pairs and `KEY=FILE` files.
fn pair_map(pairs: &[String], files: &[String]) -> anyhow::Result<SecretData> {
    let mut map = std::collections::BTreeMap::new();
    for pair in pairs {
        let (key, value) = split_pair(pair, "KEY=VALUE")?;
        if map
            .insert(key.to_string(), SecretBytes::from(value.as_bytes()))
            .is_some()
        {
            anyhow::bail!("key {key:?} given twice");
        }
    }
    for spec in files {
        let (key, file) = split_pair(spec, "KEY=FILE")?;
        let bytes = Zeroizing::new(std::fs::read(file).with_context(|| format!("reading {file}"))?);
        if map
            .insert(key.to_string(), SecretBytes::from(&bytes[..]))
            .is_some()
        {
            anyhow::bail!("key {key:?} given twice");
        }
    }
    Ok(SecretData::Map(map))
}

/// Splits `KEY=REST`; the message names the argument's shape, never its value.
fn split_pair<'a>(text: &'a str, shape: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((key, rest)) if !key.is_empty() => Ok((key, rest)),
        _ => anyhow::bail!("expected {shape} (a non-empty key, then `=`)"),
    }
}

/// One JSON value of a map secret, kept in a zeroizing buffer: strings as
/// they are, numbers and booleans as their JSON text.
struct JsonValue(SecretBytes);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = JsonValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.as_bytes())))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A map secret from a JSON object. Errors give the position, not the text.
fn json_map(text: &[u8]) -> anyhow::Result<SecretData> {
    let map: std::collections::BTreeMap<String, JsonValue> = serde_json::from_slice(text)
        .map_err(|e| {
            anyhow::anyhow!(
                "--json needs an object of strings, numbers or booleans on stdin (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
    Ok(SecretData::Map(
        map.into_iter().map(|(k, v)| (k, v.0)).collect(),
    ))
}

fn state_name(state: coffer::ApplyState) -> &'static str {
    state.as_str()
}

fn took(d: Option<&Duration>) -> Option<Duration> {
    d.copied()
}

/// `status`: the summary line, then one line per workload.
fn print_status(path: &str, status: &coffer::RotationStatus) {
    say!(
        "{path}: version {}: {}/{} applied ({} failed, {} pending)",
        status.current_version,
        status.applied,
        status.expected,
        status.failed,
        status.pending
    );
    if status.replicas > 1 {
        say!(
            "  ({} of {} replicas answered)",
            status.replicas_answered,
            status.replicas
        );
    }
    let refused = &status.watches_refused;
    if refused.total() > 0 {
        say!(
            "  {} watches of this path refused since start ({} per pod, {} per account, {} process-wide); {} of every path",
            refused.total(),
            refused.per_pod,
            refused.per_account,
            refused.process,
            status.watches_refused_all_paths.total()
        );
    }
    for w in &status.workloads {
        let mut line = format!(
            "  {}/{} pod={} version={} {}",
            w.namespace,
            w.service_account,
            if w.pod.is_empty() { "-" } else { &w.pod },
            w.version,
            state_name(w.state),
        );
        if let Some(t) = took(w.time_to_apply.as_ref()) {
            line.push_str(&format!(" in {}ms", t.as_millis()));
        }
        if !w.reason.is_empty() {
            line.push_str(&format!(" ({})", w.reason));
        }
        if w.acknowledged_at.is_some() {
            line.push_str(&format!(" at {}", timestamp(w.acknowledged_at)));
        }
        if !w.watching {
            line.push_str(" [not watching]");
        }
        say!("{line}");
    }
}

fn status_json(path: &str, status: &coffer::RotationStatus) -> serde_json::Value {
    let workloads: Vec<serde_json::Value> = status
        .workloads
        .iter()
        .map(|w| {
            serde_json::json!({
                "issuer": w.issuer,
                "namespace": w.namespace,
                "serviceAccount": w.service_account,
                "pod": w.pod,
                "podUid": w.pod_uid,
                "version": w.version,
                "state": state_name(w.state),
                "reason": w.reason,
                "watching": w.watching,
                "acknowledgedAt": w.acknowledged_at.map(|_| timestamp(w.acknowledged_at)),
                "timeToApplyMs": took(w.time_to_apply.as_ref()).map(|t| t.as_millis() as u64),
            })
        })
        .collect();
    serde_json::json!({
        "path": path,
        "currentVersion": status.current_version,
        "expected": status.expected,
        "applied": status.applied,
        "failed": status.failed,
        "pending": status.pending,
        "replicas": status.replicas,
        "replicasAnswered": status.replicas_answered,
        "watchesRefused": refusals_json(&status.watches_refused),
        "watchesRefusedAllPaths": refusals_json(&status.watches_refused_all_paths),
        "workloads": workloads,
    })
}

/// Watch refusals by bound, as `status --output json` prints them.
fn refusals_json(refused: &coffer::WatchRefusals) -> serde_json::Value {
    serde_json::json!({
        "perPod": refused.per_pod,
        "perAccount": refused.per_account,
        "process": refused.process,
    })
}

/// `--wait`: a progress bar of applied/expected until every watcher applied
/// `version` (exit 0), any failed (exit 1), or `timeout` passed (exit 1).
async fn wait_for_rollout(
    client: &Client,
    path: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{path} v{version}"));
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let status = client.status(path).await?;
        bar.set_length(u64::from(status.expected));
        bar.set_position(u64::from(status.applied));
        let current = status.current_version == version;
        if !current && status.current_version > version {
            bar.abandon();
            eprintln!(
                "cofferctl: {path} moved on to version {} meanwhile",
                status.current_version
            );
            print_status(path, &status);
            return Ok(ExitCode::from(1));
        }
        if current && status.failed > 0 {
            bar.abandon();
            print_status(path, &status);
            eprintln!(
                "cofferctl: {} workload(s) failed to apply version {version}",
                status.failed
            );
            return Ok(ExitCode::from(1));
        }
        if current && status.pending == 0 {
            bar.finish();
            print_status(path, &status);
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= until {
            bar.abandon();
            print_status(path, &status);
            eprintln!(
                "cofferctl: timed out after {}",
                humantime::format_duration(timeout)
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A rollback to a version the store no longer keeps: say which versions
/// exist and why older ones are gone (the error's exit code is kept).
async fn missing_version(
    client: &Client,
    path: &str,
    wanted: u64,
    error: coffer::Error,
) -> anyhow::Error {
    let Ok(list) = client.versions(path).await else {
        return error.into();
    };
    let kept: Vec<u64> = list
        .versions
        .iter()
        .filter(|v| v.state == coffer::VersionState::Live)
        .map(|v| v.version)
        .collect();
    let range = match (kept.first(), kept.last()) {
        (Some(first), Some(last)) if first == last => format!("version {first}"),
        (Some(first), Some(last)) => format!("versions {first} to {last}"),
        _ => "no readable version".to_string(),
    };
    let why = match list.versions.first() {
        Some(oldest) if wanted < oldest.version => {
            "; older versions were dropped: Vault's KV v2 keeps `max_versions` per secret (10 by default)"
                .to_string()
        }
        _ => String::new(),
    };
    anyhow::Error::new(error).context(format!(
        "{path} has no version {wanted} to roll back to: it keeps {range} (current {}){why}",
        list.current
    ))
}

async fn change_versions(
    broker: &BrokerArgs,
    action: coffer::VersionAction,
    path: &str,
    versions: Vec<u64>,
    done: &str,
) -> anyhow::Result<()> {
    let which = if versions.is_empty() {
        "the current version".to_string()
    } else {
        let list: Vec<String> = versions.iter().map(u64::to_string).collect();
        format!("versions {}", list.join(", "))
    };
    client(broker)
        .await?
        .change_versions(action, path, versions.clone())
        .await?;
    if json_output() {
        say!("{}", serde_json::json!({"path": path, done: versions}));
    } else {
        say!("{path}: {which} {done}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_has_a_description() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cofferctl", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

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
