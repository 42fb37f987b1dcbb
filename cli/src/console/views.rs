//! What the console shows, read from the broker with the operator's token:
//! names, versions, rotation specs and rollouts. Nothing here reads, keeps
//! or renders a secret's value: the rotation spec comes with the versions
//! (`ListVersions`), from the secret's metadata.

use std::time::{Duration, SystemTime};

use coffer::{Client, Code};
use hyper::StatusCode;
use serde::Serialize;

/// Folders are followed this deep, and at most this many names are shown.
const MAX_DEPTH: usize = 16;
const MAX_NAMES: usize = 500;
/// Labels that hold the rotation spec (see docs/rotation.md).
const SPEC_PREFIX: &str = "coffer.rotate/";
/// The spec of a secret whose versions could not be listed.
const UNKNOWN_SPEC: &str = "unknown";

/// The HTML templates, escaped by minijinja's HTML auto-escaping.
pub(super) struct Views {
    env: minijinja::Environment<'static>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretRow {
    path: String,
    current_version: Option<u64>,
    created_at: Option<String>,
    age: Option<String>,
    spec: String,
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionRow {
    version: u64,
    created_at: String,
    state: &'static str,
    current: bool,
}

impl Views {
    pub(super) fn new() -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        // Escaping by the template's name: every `.html` is HTML-escaped.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.add_template("base.html", include_str!("assets/base.html"))?;
        env.add_template("overview.html", include_str!("assets/overview.html"))?;
        env.add_template("secret.html", include_str!("assets/secret.html"))?;
        Ok(Self { env })
    }

    /// Renders `name`, then the page around it (`base.html`, given `path`
    /// and `csrf` on a secret's page).
    fn render(
        &self,
        name: &str,
        context: minijinja::Value,
        page: minijinja::Value,
    ) -> (StatusCode, String) {
        let rendered = self
            .env
            .get_template(name)
            .and_then(|t| t.render(context))
            .and_then(|main| {
                let main = minijinja::Value::from_safe_string(main);
                self.env
                    .get_template("base.html")?
                    .render(minijinja::context! { main => main, ..page })
            });
        match rendered {
            Ok(html) => (StatusCode::OK, html),
            Err(e) => {
                eprintln!("cofferctl: console: rendering {name}: {:?}", e.kind());
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render the page".to_string(),
                )
            }
        }
    }

    /// The first page: every secret the operator may list.
    pub(super) async fn overview(&self, client: &Client) -> (StatusCode, String) {
        let (rows, error) = secret_rows(client).await;
        self.render(
            "overview.html",
            minijinja::context! { rows => template_value(&rows), error => error },
            minijinja::context! {},
        )
    }

    pub(super) async fn overview_json(&self, client: &Client) -> serde_json::Value {
        let (rows, error) = secret_rows(client).await;
        serde_json::json!({ "secrets": rows, "error": error })
    }

    /// One secret: its versions (rendered) and its rollout (filled in and
    /// kept live by console.js).
    pub(super) async fn secret(
        &self,
        client: &Client,
        path: &str,
        csrf: &str,
    ) -> (StatusCode, String) {
        let (versions, spec, error) = match client.versions(path).await {
            Ok(list) => (version_rows(&list), spec_of(&list), None),
            Err(e) => (Vec::new(), UNKNOWN_SPEC.to_string(), Some(e.to_string())),
        };
        self.render(
            "secret.html",
            minijinja::context! {
                path => path, versions => template_value(&versions), error => error, spec => spec,
            },
            minijinja::context! { path => path, csrf => csrf },
        )
    }

    /// One secret's versions and rollout, for console.js's poll.
    pub(super) async fn secret_json(
        &self,
        client: &Client,
        path: &str,
    ) -> (StatusCode, serde_json::Value) {
        let versions = match client.versions(path).await {
            Ok(list) => list,
            Err(e) => return error_parts(&e),
        };
        let rollout = match client.status(path).await {
            Ok(status) => crate::status::status_json(path, &status),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        (
            StatusCode::OK,
            serde_json::json!({
                "path": path,
                "currentVersion": versions.current,
                "versions": version_rows(&versions),
                "rollout": rollout,
            }),
        )
    }
}

/// Every name under the top the operator may list, folders followed.
async fn secret_rows(client: &Client) -> (Vec<SecretRow>, Option<String>) {
    let mut names = Vec::new();
    let mut folders = vec![(String::new(), 0usize)];
    let mut error = None;
    while let Some((folder, depth)) = folders.pop() {
        match client.list_secrets(&folder).await {
            Ok(list) => {
                for name in list {
                    let full = if folder.is_empty() {
                        name.clone()
                    } else {
                        format!("{}/{name}", folder.trim_end_matches('/'))
                    };
                    if let Some(sub) = full.strip_suffix('/') {
                        if depth < MAX_DEPTH {
                            folders.push((sub.to_string(), depth + 1));
                        }
                    } else if names.len() < MAX_NAMES {
                        names.push(full);
                    }
                }
            }
            // The top may be denied while folders are not; say so once.
            Err(e) if error.is_none() => error = Some(e.to_string()),
            Err(_) => {}
        }
    }
    names.sort();
    let mut rows = Vec::with_capacity(names.len());
    for path in names {
        let mut row = SecretRow {
            path: path.clone(),
            current_version: None,
            created_at: None,
            age: None,
            spec: UNKNOWN_SPEC.to_string(),
            error: None,
        };
        match client.versions(&path).await {
            Ok(list) => {
                row.current_version = Some(list.current);
                let created = list
                    .versions
                    .iter()
                    .find(|v| v.version == list.current)
                    .and_then(|v| v.created_at);
                row.created_at = created.map(rfc3339);
                row.age = created.map(age);
                row.spec = spec_of(&list);
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        rows.push(row);
    }
    (rows, error)
}

fn version_rows(list: &coffer::operator::Versions) -> Vec<VersionRow> {
    let mut rows: Vec<VersionRow> = list
        .versions
        .iter()
        .map(|v| VersionRow {
            version: v.version,
            created_at: crate::output::timestamp(v.created_at),
            state: match v.state {
                coffer::operator::VersionState::Destroyed => "destroyed",
                coffer::operator::VersionState::Deleted => "deleted",
                _ => "live",
            },
            current: v.version == list.current,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.version));
    rows
}

/// The rotation spec stored with the secret, as `name=value` pairs: the
/// `coffer.rotate/*` labels `ListVersions` answers from the secret's
/// metadata. Showing it reads no value, so on a leased path (a database
/// login, a certificate) looking issues nothing.
fn spec_of(list: &coffer::operator::Versions) -> String {
    let spec: Vec<String> = list
        .rotation_labels
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(SPEC_PREFIX).map(|k| format!("{k}={v}")))
        .collect();
    if spec.is_empty() {
        "default".to_string()
    } else {
        spec.join(" ")
    }
}

/// Rows as template values, through their JSON form (this minijinja is
/// built without its serde feature).
fn template_value<T: Serialize>(rows: &T) -> minijinja::Value {
    fn convert(v: serde_json::Value) -> minijinja::Value {
        use serde_json::Value as J;
        match v {
            J::Null => minijinja::Value::from(()),
            J::Bool(b) => minijinja::Value::from(b),
            J::Number(n) => n
                .as_u64()
                .map(minijinja::Value::from)
                .or_else(|| n.as_i64().map(minijinja::Value::from))
                .unwrap_or_else(|| minijinja::Value::from(n.as_f64().unwrap_or_default())),
            J::String(s) => minijinja::Value::from(s),
            J::Array(a) => minijinja::Value::from(a.into_iter().map(convert).collect::<Vec<_>>()),
            J::Object(o) => minijinja::Value::from(
                o.into_iter()
                    .map(|(k, v)| (k, convert(v)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        }
    }
    convert(serde_json::to_value(rows).unwrap_or_default())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// A broker error as an HTTP status and a JSON body.
pub(super) fn error_parts(e: &coffer::Error) -> (StatusCode, serde_json::Value) {
    let status = match e.code() {
        Some(Code::PermissionDenied) => StatusCode::FORBIDDEN,
        Some(Code::NotFound) => StatusCode::NOT_FOUND,
        Some(Code::InvalidArgument | Code::FailedPrecondition) => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    // The SDK's text: the broker's category and fixed message, never a value.
    (status, serde_json::json!({ "error": e.to_string() }))
}
