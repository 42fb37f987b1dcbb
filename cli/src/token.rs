//! `cofferctl token verify`: a token checked exactly as the broker checks
//! it, and everything an operator debugging a pod's token needs to see:
//! issuer, audiences, subject, the times (absolute and relative), the
//! `kubernetes.io` names and uids, the key and algorithm, and the verdict
//! (with the precise reason of a refusal). The token itself is never
//! printed; its claims are not secret.

use std::{
    io::Read,
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use coffer_broker::auth::{
    inspect::{NamedObject, Unverified, read_unverified},
    jwt::{JwtVerifier, KeySet, VerifierConfig},
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::output::{Printer, say};

/// Exit status of a rejected token.
const EXIT_REJECTED: u8 = 1;
/// Exit status of a usage error (unreadable JWKS, no token).
const EXIT_USAGE: u8 = 2;
/// 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
const RFC3339_END: u64 = 253_402_300_800;

/// Reads the token from stdin, verifies it against `jwks` and prints the
/// result: 0 valid, 1 rejected, 2 usage error.
pub(crate) fn verify(
    out: Printer,
    jwks: &Path,
    issuer: String,
    audience: String,
    leeway: u64,
) -> ExitCode {
    let keys = match std::fs::read(jwks)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(KeySet::from_jwks_json(&b)?))
    {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("cofferctl: {}: {e:#}", jwks.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut token = Zeroizing::new(String::new());
    if let Err(e) = std::io::stdin().read_to_string(&mut token) {
        eprintln!("cofferctl: cannot read the token from stdin: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let token = token.trim();
    if token.is_empty() {
        eprintln!("cofferctl: no token on stdin");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut config = VerifierConfig::new(issuer, audience);
    config.leeway = Duration::from_secs(leeway);
    let verdict = JwtVerifier::new(config, keys)
        .verify(token)
        .map(|verified| verified.identity);
    // Read after the verdict and only for display: the verdict alone says
    // whether any of it can be trusted.
    let read = read_unverified(token).ok();
    let now = unix_now();
    match verdict {
        Ok(id) if out.json() => {
            out.value(&json!({
                "valid": true,
                "subject": id.subject(),
                "namespace": id.namespace,
                "serviceAccount": id.service_account,
                "serviceAccountUid": id.service_account_uid,
                "pod": id.pod_name,
                "podUid": id.pod_uid,
                "token": read.as_ref().map(claims_json),
            }));
            ExitCode::SUCCESS
        }
        Err(reason) if out.json() => {
            out.value(&json!({
                "valid": false,
                "reason": reason.reason(),
                "message": reason.to_string(),
                "token": read.as_ref().map(claims_json),
            }));
            ExitCode::from(EXIT_REJECTED)
        }
        Ok(id) => {
            say!(out, "valid: {}", id.subject());
            if let Some(read) = &read {
                for line in describe(read, now) {
                    say!(out, "  {line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(reason) => {
            say!(out, "rejected: {reason} ({})", reason.reason());
            if let Some(read) = read
                .as_ref()
                .filter(|r| r.claims_readable || r.alg.is_some())
            {
                say!(out, "  as written in the token, NOT verified:");
                for line in describe(read, now) {
                    say!(out, "  {line}");
                }
            }
            ExitCode::from(EXIT_REJECTED)
        }
    }
}

/// The lines describing a token, each `label: value`, aligned.
fn describe(read: &Unverified, now: u64) -> Vec<String> {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let object = |o: &Option<NamedObject>| match o {
        None => "-".to_string(),
        Some(o) => format!(
            "{} (uid {})",
            o.name.as_deref().unwrap_or("-"),
            o.uid.as_deref().unwrap_or("-")
        ),
    };
    let aud = if read.aud.is_empty() {
        "-".to_string()
    } else {
        read.aud.join(", ")
    };
    let mut lines = vec![
        ("issuer", text(&read.iss)),
        ("audiences", aud),
        ("subject", text(&read.sub)),
        ("namespace", text(&read.namespace)),
        ("service account", object(&read.service_account)),
        ("pod", object(&read.pod)),
    ];
    if read.node.is_some() {
        lines.push(("node", object(&read.node)));
    }
    lines.extend([
        ("issued at", when(read.iat, now)),
        ("not before", when(read.nbf, now)),
        ("expires", when(read.exp, now)),
        ("key id", text(&read.kid)),
        ("algorithm", text(&read.alg)),
    ]);
    lines
        .into_iter()
        .map(|(label, value)| format!("{:<16} {value}", format!("{label}:")))
        .collect()
}

/// The claims as JSON: times as Unix seconds and as RFC 3339.
fn claims_json(read: &Unverified) -> serde_json::Value {
    let object =
        |o: &Option<NamedObject>| o.as_ref().map(|o| json!({"name": o.name, "uid": o.uid}));
    json!({
        "iss": read.iss,
        "aud": read.aud,
        "sub": read.sub,
        "iat": read.iat,
        "nbf": read.nbf,
        "exp": read.exp,
        "issuedAt": read.iat.and_then(rfc3339),
        "notBefore": read.nbf.and_then(rfc3339),
        "expiresAt": read.exp.and_then(rfc3339),
        "namespace": read.namespace,
        "serviceAccount": object(&read.service_account),
        "pod": object(&read.pod),
        "node": object(&read.node),
        "kid": read.kid,
        "alg": read.alg,
    })
}

/// `2025-01-01T10:00:00Z (in 5m)`, or `-` when absent.
fn when(at: Option<u64>, now: u64) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let absolute = rfc3339(at).unwrap_or_else(|| format!("{at} (Unix seconds)"));
    format!("{absolute} ({})", relative(at, now))
}

/// Unix seconds as RFC 3339 UTC, if the year has four digits.
fn rfc3339(at: u64) -> Option<String> {
    (at < RFC3339_END)
        .then(|| UNIX_EPOCH.checked_add(Duration::from_secs(at)))
        .flatten()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// `in 5m`, `3m ago` or `now`: the two largest units.
fn relative(at: u64, now: u64) -> String {
    match at.cmp(&now) {
        std::cmp::Ordering::Equal => "now".into(),
        std::cmp::Ordering::Greater => format!("in {}", span(at - now)),
        std::cmp::Ordering::Less => format!("{} ago", span(now - at)),
    }
}

/// `42s`, `5m`, `5m30s`, `2h5m`, `3d4h`.
fn span(seconds: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, size)| seconds >= *size) else {
        return "0s".into();
    };
    let (name, size) = units[first];
    let mut out = format!("{}{name}", seconds / size);
    if let Some((next, next_size)) = units.get(first + 1) {
        let rest = seconds % size / next_size;
        if rest > 0 {
            out.push_str(&format!("{rest}{next}"));
        }
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_show_the_two_largest_units() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(42), "42s");
        assert_eq!(span(300), "5m");
        assert_eq!(span(330), "5m30s");
        assert_eq!(span(7_500), "2h5m");
        assert_eq!(span(273_600), "3d4h");
    }

    #[test]
    fn times_are_relative_to_now() {
        assert_eq!(relative(1_300, 1_000), "in 5m");
        assert_eq!(relative(1_000, 1_180), "3m ago");
        assert_eq!(relative(1_000, 1_000), "now");
        assert_eq!(
            when(Some(1_700_000_000), 1_700_000_300),
            "2023-11-14T22:13:20Z (5m ago)"
        );
        assert_eq!(when(None, 0), "-");
        // Past RFC 3339's years: the number itself, never a panic.
        assert!(
            when(Some(u64::MAX), 0).starts_with(&format!("{} (Unix seconds) (in ", u64::MAX)),
            "{}",
            when(Some(u64::MAX), 0)
        );
    }
}
