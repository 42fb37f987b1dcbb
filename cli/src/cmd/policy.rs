//! `cofferctl policy check` and `lint`, offline: a decision exactly as the
//! broker makes it, and a policy file's validity and risky breadth.

use std::process::ExitCode;

use coffer_broker::{auth::WorkloadIdentity, path::SecretPath, policy::Policy};

use crate::{
    args::PolicyCommand,
    exit,
    output::{Printer, say},
};

/// Runs `policy check` or `policy lint`.
pub(crate) fn run(out: Printer, command: PolicyCommand) -> ExitCode {
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
                    return ExitCode::from(exit::USAGE);
                }
            };
            let path = match SecretPath::parse(&path) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("cofferctl: invalid path {path:?}: {e}");
                    return ExitCode::from(exit::USAGE);
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
            if out.json() {
                out.value(&serde_json::json!({"allowed": decision.is_allowed(), "decision": decision.to_string()}));
            } else {
                say!(out, "{decision}");
            }
            if decision.is_allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
        PolicyCommand::Lint { file, strict } => match Policy::load(&file) {
            Err(e) if out.json() => {
                out.value(&serde_json::json!({"file": file.display().to_string(), "valid": false, "error": e.to_string()}));
                ExitCode::from(exit::FAILURE)
            }
            Err(e) => {
                say!(out, "{}: {e}", file.display());
                ExitCode::from(exit::FAILURE)
            }
            Ok(policy) if out.json() => {
                let warnings: Vec<String> =
                    policy.warnings().iter().map(ToString::to_string).collect();
                let failed = strict && !warnings.is_empty();
                out.value(&serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": true,
                    "rules": policy.rules().len(),
                    "warnings": warnings,
                }));
                if failed {
                    ExitCode::from(exit::FAILURE)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Ok(policy) => {
                let warnings = policy.warnings();
                for w in &warnings {
                    say!(out, "{}: warning: {w}", file.display());
                }
                say!(
                    out,
                    "{}: valid, {} rules, {} warnings",
                    file.display(),
                    policy.rules().len(),
                    warnings.len()
                );
                if strict && !warnings.is_empty() {
                    ExitCode::from(exit::FAILURE)
                } else {
                    ExitCode::SUCCESS
                }
            }
        },
    }
}
