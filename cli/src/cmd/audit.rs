//! `cofferctl audit verify`, offline: the hash chain of the broker's audit
//! files, optionally HMAC-keyed and anchored to a head logged elsewhere.

use std::process::ExitCode;

use coffer_broker::audit;

use crate::{
    args::AuditCommand,
    exit,
    output::{Printer, say},
};

/// Runs `audit verify`.
pub(crate) fn run(out: Printer, command: AuditCommand) -> ExitCode {
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
                return ExitCode::from(exit::USAGE);
            }
        },
    };
    let mut contents = Vec::with_capacity(files.len());
    for file in &files {
        match std::fs::read(file) {
            Ok(bytes) => contents.push((file.display().to_string(), bytes)),
            Err(e) => {
                eprintln!("cofferctl: {}: {e}", file.display());
                return ExitCode::from(exit::USAGE);
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
        Ok(summary) if out.json() => {
            out.value(&serde_json::json!({
                "intact": true,
                "records": summary.records,
                "firstSeq": summary.first_seq,
                "lastHash": summary.last_hash.to_string(),
                "anchored": summary.anchored,
                "nextAnchor": summary.next_anchor().to_string(),
            }));
            ExitCode::SUCCESS
        }
        Err(broken) if out.json() => {
            out.value(&serde_json::json!({"intact": false, "brokenAt": broken.to_string()}));
            ExitCode::from(exit::FAILURE)
        }
        Ok(summary) => {
            say!(
                out,
                "intact: {} records from seq {}; last record hash {}",
                summary.records,
                summary
                    .first_seq
                    .map_or_else(|| "-".to_string(), |s| s.to_string()),
                summary.last_hash
            );
            if summary.anchored {
                say!(out, "anchored: the chain passes through the given anchor");
            } else if summary.first_seq.is_some_and(|first| first > 0) {
                say!(
                    out,
                    "NOT ANCHORED: the trail starts at seq {}; records before it were pruned or cut. \
                     Give --anchor NEXT_SEQ:LAST_HASH (the broker's `audit chain head` log line) to tell which.",
                    summary.first_seq.unwrap_or_default()
                );
            }
            say!(
                out,
                "next anchor: {} (keep it elsewhere; the next verify takes it as --anchor)",
                summary.next_anchor()
            );
            ExitCode::SUCCESS
        }
        Err(broken) => {
            say!(out, "BROKEN at {broken}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
