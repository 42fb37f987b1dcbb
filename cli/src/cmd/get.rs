//! `cofferctl get`: a secret's value on stdout, as it is for pipes and
//! files, refused on a terminal when it could drive it, or as JSON. Every
//! copy of the value is a zeroizing buffer.

use std::{io::IsTerminal, process::ExitCode};

use coffer::SecretData;
use zeroize::Zeroizing;

use crate::{args::GetArgs, connect::connect, output::Printer};

/// Prints the value of `path` (or one of its versions).
pub(crate) async fn run(out: Printer, args: GetArgs) -> anyhow::Result<ExitCode> {
    let GetArgs {
        path,
        version,
        raw,
        broker,
    } = args;
    let secret = connect(&broker).await?.get_version(&path, version).await?;
    if out.json() {
        return print_json(out, &path, &secret);
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
    if !raw && std::io::stdout().is_terminal() && !terminal_safe(&text) {
        eprintln!(
            "cofferctl: {path} holds control characters or non-UTF-8 bytes; refusing to \
             write them to a terminal (use --raw, or redirect to a file or pipe)"
        );
        return Ok(ExitCode::FAILURE);
    }
    out.bytes(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `get --output json`: `{"path", "version", "data"}`, where `data` is
/// `{"text": ...}` for a UTF-8 value and `{"base64": ...}` otherwise (a map
/// secret: one such object per key). Written straight into a zeroizing
/// buffer, so no copy of the value outlives the call.
fn print_json(printer: Printer, path: &str, secret: &coffer::Secret) -> anyhow::Result<ExitCode> {
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
    printer.bytes(&out)?;
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
