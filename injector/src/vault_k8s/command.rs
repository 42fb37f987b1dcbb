//! `agent-inject-command-<name>` → a sidecar `action`. Vault Agent runs the
//! command with a shell in its own container; the sidecar's image has no
//! shell or tools, so only the commands whose effect an action has are
//! translated: `pkill -SIG NAME`, `kill -SIG $(cat FILE)`, and
//! `curl -X POST http://…`.

use serde_json::{Value, json};

/// What to write instead of a command that is not translated.
pub const INSTEAD: &str = "write coffer.dev/action-<name>: {signal: HUP, processName: APP} (with \
    coffer.dev/share-process-namespace: \"true\"), {signal: HUP, pidFile: FILE} or {post: \
    http://127.0.0.1:PORT/reload}: the sidecar image has no shell";

/// The action for `command`, or `None`.
pub fn action(command: &str) -> Option<Value> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["pkill", signal, name] => {
            Some(json!({"signal": signal_name(signal)?, "processName": plain(name)?}))
        }
        ["pkill", "--signal", signal, name] => {
            Some(json!({"signal": bare(signal)?, "processName": plain(name)?}))
        }
        ["curl", rest @ ..] => post(rest),
        ["kill", ..] => kill_pid_file(&words),
        _ => None,
    }
}

/// `-HUP` or `-SIGHUP` → `HUP`.
fn signal_name(flag: &str) -> Option<String> {
    bare(flag.strip_prefix('-')?)
}

fn bare(signal: &str) -> Option<String> {
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && !name.chars().all(|c| c.is_ascii_digit()))
    .then(|| name.to_string())
}

/// A process name without pattern characters (pkill takes a regex).
fn plain(name: &str) -> Option<String> {
    (!name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
    .then(|| name.to_string())
}

fn post(args: &[&str]) -> Option<Value> {
    let mut url = None;
    let mut is_post = false;
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "-X" | "--request" => {
                is_post = args.get(i + 1) == Some(&"POST");
                i += 2;
                continue;
            }
            "-XPOST" => is_post = true,
            "-s" | "-sS" | "-f" | "-fsS" | "-sf" | "--silent" | "--fail" => {}
            word if word.starts_with("http://") && url.is_none() => url = Some(word),
            _ => return None,
        }
        i += 1;
    }
    if !is_post {
        return None;
    }
    Some(json!({"post": url?}))
}

/// `kill -SIG $(cat FILE)` (or with backquotes).
fn kill_pid_file(words: &[&str]) -> Option<Value> {
    let (signal, rest) = match words {
        ["kill", "-s", signal, rest @ ..] => (bare(signal)?, rest),
        ["kill", flag, rest @ ..] => (signal_name(flag)?, rest),
        _ => return None,
    };
    let file = match rest {
        ["$(cat", file] => file.strip_suffix(')')?,
        ["`cat", file] => file.strip_suffix('`')?,
        _ => return None,
    };
    (file.starts_with('/') && !file.contains(['$', '`', ')', '(']))
        .then(|| json!({"signal": signal, "pidFile": file}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn either(command: &str) -> Option<Value> {
        action(command)
    }

    #[test]
    fn pkill_becomes_a_signal_by_process_name() {
        // vault-k8s's annotations_test.go uses "pkill -HUP nginx".
        assert_eq!(
            either("pkill -HUP nginx"),
            Some(json!({"signal": "HUP", "processName": "nginx"}))
        );
        assert_eq!(
            either("pkill -SIGUSR1 app"),
            Some(json!({"signal": "USR1", "processName": "app"}))
        );
        assert_eq!(
            either("pkill --signal TERM app"),
            Some(json!({"signal": "TERM", "processName": "app"}))
        );
    }

    #[test]
    fn kill_of_a_pid_file_becomes_a_signal_by_pid_file() {
        assert_eq!(
            either("kill -HUP $(cat /run/app.pid)"),
            Some(json!({"signal": "HUP", "pidFile": "/run/app.pid"}))
        );
        assert_eq!(
            either("kill -s HUP `cat /run/app.pid`"),
            Some(json!({"signal": "HUP", "pidFile": "/run/app.pid"}))
        );
    }

    #[test]
    fn curl_post_becomes_a_post() {
        assert_eq!(
            either("curl -X POST http://127.0.0.1:8080/reload"),
            Some(json!({"post": "http://127.0.0.1:8080/reload"}))
        );
        assert_eq!(
            either("curl -sf -XPOST http://localhost/-/reload"),
            Some(json!({"post": "http://localhost/-/reload"}))
        );
    }

    #[test]
    fn anything_else_is_not_translated() {
        for command in [
            "kill -HUP 1",
            "pkill -1 nginx",
            "pkill -HUP 'ngi.*'",
            "sh -c 'kill -HUP $(pidof app)'",
            "curl http://127.0.0.1/reload",
            "curl -X POST https://example.com/reload",
            "/app/reload.sh",
            "kill -HUP $(cat run/app.pid)",
        ] {
            assert_eq!(either(command), None, "{command}");
        }
    }
}
