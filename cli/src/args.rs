//! The command line: every flag, subcommand and help text of `cofferctl`,
//! parsed by clap. Nothing here runs a command; `cmd` does.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use coffer_broker::{audit, policy::Capability};

use crate::{console::ConsoleArgs, exit, output::Format};

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
    after_help = exit::EXIT_CODES
)]
pub(crate) struct Cli {
    /// Output format: text for people, json (one object per result) for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
    /// Connection flags before the subcommand (`cofferctl --broker X put
    /// ...`, as kubectl and vault take them); the subcommand's own win.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How to reach the broker: only the commands that talk to it take these.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BrokerArgs {
    /// The broker: https://host:port, http://127.0.0.1:port or unix:/path.
    #[arg(long, env = "COFFER_BROKER")]
    pub(crate) broker: Option<String>,
    /// The operator's token file.
    #[arg(long, env = "COFFER_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// CA bundle (PEM) for the broker's certificate.
    #[arg(long, env = "COFFER_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// These flags, each unset one taken from `leading` (the flags given
    /// before the subcommand): the subcommand's own win.
    pub(crate) fn or(self, leading: &BrokerArgs) -> BrokerArgs {
        BrokerArgs {
            broker: self.broker.or_else(|| leading.broker.clone()),
            token_file: self.token_file.or_else(|| leading.token_file.clone()),
            ca_file: self.ca_file.or_else(|| leading.ca_file.clone()),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write a new version: a map from KEY=VALUE pairs, --from-file or
    /// --json, or else the bytes on stdin.
    ///
    /// Values given as KEY=VALUE are visible in the process list and shell
    /// history: prefer --from-file KEY=FILE or stdin for real secrets. A map
    /// write replaces the whole secret. Stdin bytes are written as they are,
    /// except that one trailing newline is dropped when stdin is a terminal
    /// (--strip-newline / --keep-newline decide either way).
    #[command(verbatim_doc_comment)]
    Put(PutArgs),
    /// Have the broker generate a new value (capability `rotate`). Unset
    /// options come from the spec stored with the secret (labels
    /// `coffer.rotate/*`), then the defaults: 32 characters of [A-Za-z0-9].
    /// A spec given here is stored for the next rotation.
    Rotate(RotateArgs),
    /// Print a secret's value to stdout. On a terminal, a value with control
    /// characters or bytes that are not UTF-8 is refused (they could drive
    /// the terminal) unless --raw is given; pipes and files get the bytes.
    Get(GetArgs),
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
    /// Rewrite Kubernetes YAML from Vault Agent's annotations to Coffer's,
    /// offline (docs/cli.md, "Moving from Vault Agent").
    ///
    /// Reads a file (or - for stdin) of Pods, Deployments, StatefulSets,
    /// DaemonSets, ReplicaSets, Jobs and CronJobs, several documents or one,
    /// and prints it with each pod template's vault.hashicorp.com/
    /// annotations translated into coffer.dev/ ones and its Go templates
    /// converted; everything else unchanged (YAML comments are not kept).
    /// The report on stderr gives every vault-k8s annotation's outcome:
    /// translated, converted, ignored (why) or refused (what to write
    /// instead; refused annotations are kept as they are). With --check
    /// only the report is printed, and the exit status is 1 when any
    /// annotation would be refused.
    #[command(verbatim_doc_comment)]
    Migrate {
        /// The YAML file, or - for stdin.
        file: std::path::PathBuf,
        /// Print only the report; exit 1 when anything would be refused.
        #[arg(long)]
        check: bool,
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
        args: ConsoleArgs,
    },
}

// The flags of the commands that take many; the commands' help texts stay
// on their variants above (these have no doc comments, so nothing here can
// replace one).

#[derive(clap::Args)]
pub(crate) struct PutArgs {
    /// The secret's path, e.g. `shop/db`.
    pub(crate) path: String,
    /// KEY=VALUE pairs of a map secret.
    #[arg(value_name = "KEY=VALUE")]
    pub(crate) pairs: Vec<String>,
    /// A key whose value is a file's bytes (repeatable).
    #[arg(long, value_name = "KEY=FILE")]
    pub(crate) from_file: Vec<String>,
    /// Read a JSON object of string values from stdin: a map secret.
    #[arg(long, conflicts_with_all = ["pairs", "from_file"])]
    pub(crate) json: bool,
    /// Drop one trailing newline from stdin bytes.
    #[arg(long, conflicts_with = "keep_newline")]
    pub(crate) strip_newline: bool,
    /// Keep stdin bytes exactly, even from a terminal.
    #[arg(long)]
    pub(crate) keep_newline: bool,
    /// Content type hint.
    #[arg(long, default_value = "text/plain")]
    pub(crate) content_type: String,
    /// Write only if the current version is this (0: only if absent).
    #[arg(long)]
    pub(crate) cas: Option<u64>,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
}

#[derive(clap::Args)]
pub(crate) struct RotateArgs {
    /// The secret's path, e.g. `shop/db`.
    pub(crate) path: String,
    /// For a map secret: the key to rotate; the other keys are kept.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Characters to generate (bytes for hex and base64).
    #[arg(long)]
    pub(crate) length: Option<u32>,
    /// The characters to draw from.
    #[arg(long)]
    pub(crate) alphabet: Option<String>,
    /// chars (default), hex or base64.
    #[arg(long)]
    pub(crate) encoding: Option<String>,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
}

#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// The secret's path; `path#key` for one key of a map secret.
    pub(crate) path: String,
    /// An older version instead of the current one.
    #[arg(long)]
    pub(crate) version: Option<u64>,
    /// Write the bytes to a terminal even if they hold control characters.
    #[arg(long)]
    pub(crate) raw: bool,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
}

/// `--wait`: follow the rollout until every watcher applied the new version.
#[derive(clap::Args)]
pub(crate) struct WaitArgs {
    /// Show a progress bar until every workload watching the path applied
    /// the new version; exit 1 when any failed or the timeout passed.
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, requires = "wait")]
    pub(crate) timeout: Duration,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
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
pub(crate) enum AuditCommand {
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

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_argument_has_a_description() {
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
        Cli::command().debug_assert();
    }
}
