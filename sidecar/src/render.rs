//! Turning a secret into a file's bytes.
//!
//! Every format is deterministic (keys in byte order, no timestamps), so the
//! same secret always renders to the same bytes and an unchanged secret never
//! causes a write. Errors name keys and formats, never values.

use std::{collections::BTreeMap, fmt::Write as _};

use coffer::SecretData;
use serde::Deserialize;
use zeroize::Zeroizing;

/// How a secret becomes a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// The value's bytes as they are (needs a single value or `path#key`).
    #[default]
    Raw,
    /// A JSON object of every key (values must be UTF-8).
    Json,
    /// `KEY="value"` lines in the double-quoted dotenv dialect.
    Dotenv,
    /// A Java `.properties` file, escaped as `Properties.store` does.
    Properties,
    /// A YAML mapping of every key, every scalar double-quoted.
    Yaml,
    /// A minijinja template with every key in scope.
    Template,
}

/// What a render needs besides the secret.
#[derive(Debug, Clone, Default)]
pub struct RenderSpec {
    /// The format.
    pub format: Format,
    /// The key a single value is known by (`path#key` gives it; else `value`).
    pub single_key: String,
    /// The template source, for [`Format::Template`].
    pub template: Option<String>,
}

impl RenderSpec {
    /// A spec for `format`, naming a single value `value`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            single_key: "value".into(),
            template: None,
        }
    }
}

/// Why a value cannot be rendered. Never includes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("the secret is a map of keys; select one with `path#key` or choose a format")]
    NeedsSingleValue,
    #[error("the secret has no key {0:?}")]
    MissingKey(String),
    #[error("key {0:?} is not valid UTF-8, which this format requires")]
    NotUtf8(String),
    #[error("key {0:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    BadEnvName(String),
    #[error("key {0:?} holds a NUL byte, which this format cannot represent")]
    Nul(String),
    #[error("the template format needs `template` or `templateFile`")]
    NoTemplate,
    #[error("template: {0}")]
    Template(String),
}

/// Renders `data` as `spec` asks.
pub fn render(data: &SecretData, spec: &RenderSpec) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    // Sized up front so the buffer rarely reallocates and leaves copies behind.
    let capacity = data.size() * 6 + 64;
    match spec.format {
        Format::Raw => match data {
            SecretData::Bytes(b) => Ok(Zeroizing::new(b.expose().to_vec())),
            SecretData::Map(_) => Err(RenderError::NeedsSingleValue),
        },
        Format::Json => {
            let map = utf8_map(data, &spec.single_key)?;
            let mut out = Zeroizing::new(Vec::with_capacity(capacity));
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer_pretty(&mut *out, &map);
            out.push(b'\n');
            Ok(out)
        }
        Format::Dotenv => {
            let map = utf8_map(data, &spec.single_key)?;
            let mut out = Zeroizing::new(String::with_capacity(capacity));
            for (key, value) in map {
                dotenv_line(&mut out, key, value)?;
            }
            Ok(into_bytes(out))
        }
        Format::Properties => {
            let map = utf8_map(data, &spec.single_key)?;
            let mut out = Zeroizing::new(String::with_capacity(capacity));
            for (key, value) in map {
                properties_escape(&mut out, key, true);
                out.push('=');
                properties_escape(&mut out, value, false);
                out.push('\n');
            }
            Ok(into_bytes(out))
        }
        Format::Yaml => {
            let map = utf8_map(data, &spec.single_key)?;
            let mut out = Zeroizing::new(String::with_capacity(capacity));
            if map.is_empty() {
                out.push_str("{}\n");
            }
            for (key, value) in map {
                yaml_quoted(&mut out, key);
                out.push_str(": ");
                yaml_quoted(&mut out, value);
                out.push('\n');
            }
            Ok(into_bytes(out))
        }
        Format::Template => {
            let source = spec.template.as_deref().ok_or(RenderError::NoTemplate)?;
            let map = utf8_map(data, &spec.single_key)?;
            render_template(source, &map)
        }
    }
}

/// Compiles `source` without rendering, so a bad template is a config error.
pub fn check_template(source: &str) -> Result<(), RenderError> {
    let env = template_env();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| RenderError::Template(template_error(&e)))
}

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // Secrets are not HTML; an unknown key is a mistake, not an empty string.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // The builder only fails on clashing custom delimiters; there are none.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    crate::go_filters::register(&mut env);
    env
}

/// The error's kind and line: minijinja's Display can quote rendered values.
fn template_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{:?} at line {line}", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

fn render_template(
    source: &str,
    map: &BTreeMap<&str, &str>,
) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    let env = template_env();
    let template = env
        .template_from_str(source)
        .map_err(|e| RenderError::Template(template_error(&e)))?;
    use minijinja::Value;
    let secret: BTreeMap<Value, Value> = map
        .iter()
        .map(|(k, v)| (Value::from(*k), Value::from(*v)))
        .collect();
    // Keys are in scope by name, and all of them as `secret["any-key"]`.
    let mut context = secret.clone();
    context.insert(Value::from("secret"), Value::from(secret));
    let text = template
        .render(Value::from(context))
        .map_err(|e| RenderError::Template(template_error(&e)))?;
    Ok(into_bytes(Zeroizing::new(text)))
}

fn into_bytes(text: Zeroizing<String>) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(text.as_bytes().to_vec())
}

/// How one dotenv value is quoted. bash `source` and python-dotenv read both
/// quotings alike, except where the value leaves no common form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotenvQuoting {
    /// `"..."` with `\\` and `\"` only; newlines, tabs and CRs raw. For
    /// values without `$` or a backtick, which a shell would expand.
    Double,
    /// `'...'`, every byte raw: nothing inside expands in bash. For values
    /// with `$` or a backtick and no `'`, and no backslash that
    /// python-dotenv would unescape (`\\`, or one at the end).
    Single,
    /// `"..."` with `\$` and `` \` `` as well: exact and inert in bash,
    /// but python-dotenv keeps those two backslashes. Only for values with
    /// `$` or a backtick that no other form fits.
    DoubleShellEscaped,
}

fn dotenv_quoting(value: &str) -> DotenvQuoting {
    if !value.contains(['$', '`']) {
        DotenvQuoting::Double
    } else if !value.contains('\'') && !value.contains("\\\\") && !value.ends_with('\\') {
        DotenvQuoting::Single
    } else {
        DotenvQuoting::DoubleShellEscaped
    }
}

/// What a reader of a dotenv file should know about a value, by key. Never
/// holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DotenvNote {
    /// The value holds `${`: python-dotenv's default (`interpolate=True`)
    /// replaces `${NAME}` with another environment variable, even inside
    /// quotes. Read the file with `interpolate=False`.
    Interpolates(String),
    /// The value holds `$` or a backtick together with `'` or a backslash
    /// pair: it is written for bash (`\$`, `` \` ``), and python-dotenv
    /// reads those backslashes literally.
    ShellEscaped(String),
    /// The value holds a carriage return, written raw: bash keeps it, but
    /// Python's universal newlines turn it into `\n` unless the file is
    /// opened with `newline=''` (python-dotenv: `stream=open(path, newline='')`).
    CarriageReturn(String),
}

/// The notes on rendering `data` as dotenv, for the caller to log by key.
pub fn dotenv_notes(data: &SecretData, single_key: &str) -> Vec<DotenvNote> {
    let Ok(map) = utf8_map(data, single_key) else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    for (key, value) in map {
        if value.contains("${") {
            notes.push(DotenvNote::Interpolates(key.to_string()));
        }
        if dotenv_quoting(value) == DotenvQuoting::DoubleShellEscaped {
            notes.push(DotenvNote::ShellEscaped(key.to_string()));
        }
        if value.contains('\r') {
            notes.push(DotenvNote::CarriageReturn(key.to_string()));
        }
    }
    notes
}

/// `KEY="value"` or `KEY='value'`, chosen per value so that both bash
/// `source` and python-dotenv read back the exact value (see
/// [`DotenvQuoting`]); nothing inside a secret is ever expanded or executed
/// by a shell.
fn dotenv_line(out: &mut String, key: &str, value: &str) -> Result<(), RenderError> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(RenderError::BadEnvName(key.into()));
    }
    if value.contains('\0') {
        return Err(RenderError::Nul(key.into()));
    }
    out.push_str(key);
    out.push('=');
    let quoting = dotenv_quoting(value);
    if quoting == DotenvQuoting::Single {
        out.push('\'');
        out.push_str(value);
        out.push_str("'\n");
        return Ok(());
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push_str("\"\n");
    Ok(())
}

/// A double-quoted YAML scalar. Quoting every scalar means no value can be
/// read as another type (`yes`, `0400`, `null`: YAML 1.1 readers such as
/// PyYAML and SnakeYAML turn plain `yes` into `true`). Escapes are the ones
/// YAML 1.1 and 1.2 share; every character outside YAML's printable set
/// (C0, DEL, C1, U+FFFE, U+FFFF), and those it treats as line breaks or
/// strips (NEL, U+2028/9, BOM), is written as `\uXXXX`. PyYAML and ruamel
/// refuse a whole file that holds one of them raw.
fn yaml_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' | '\u{2029}' | '\u{feff}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            // YAML's c-printable, less what the arms above took.
            ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => {
                out.push(c)
            }
            // Everything else is in the BMP: C0, DEL, C1, U+FFFE, U+FFFF.
            c => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Java's `Properties.saveConvert` with `escapeUnicode`: the output is pure
/// ASCII and `Properties.load` reads back exactly the input.
fn properties_escape(out: &mut String, text: &str, is_key: bool) {
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' if i == 0 || is_key => out.push_str("\\ "),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{c}' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            // Java chars are UTF-16 units: astral characters become pairs.
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
        }
    }
}

fn utf8_map<'a>(
    data: &'a SecretData,
    single_key: &'a str,
) -> Result<BTreeMap<&'a str, &'a str>, RenderError> {
    match data {
        SecretData::Bytes(b) => Ok([(
            single_key,
            std::str::from_utf8(b.expose()).map_err(|_| RenderError::NotUtf8(single_key.into()))?,
        )]
        .into()),
        SecretData::Map(map) => map
            .iter()
            .map(|(k, v)| {
                std::str::from_utf8(v.expose())
                    .map(|v| (k.as_str(), v))
                    .map_err(|_| RenderError::NotUtf8(k.clone()))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer::SecretBytes;

    fn map(items: &[(&str, &str)]) -> SecretData {
        SecretData::Map(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::from(v.as_bytes())))
                .collect(),
        )
    }

    fn text(data: &SecretData, spec: &RenderSpec) -> String {
        String::from_utf8(render(data, spec).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn raw_passes_bytes_through_and_refuses_maps() {
        let bytes = SecretData::Bytes(SecretBytes::from(&b"\x00\xffbin"[..]));
        let spec = RenderSpec::new(Format::Raw);
        assert_eq!(&**render(&bytes, &spec).unwrap(), b"\x00\xffbin");
        assert_eq!(
            render(&map(&[("a", "1")]), &spec),
            Err(RenderError::NeedsSingleValue)
        );
    }

    #[test]
    fn json_escapes_quotes_and_newlines() {
        assert_eq!(
            text(&map(&[("pw", "a\"b\nc")]), &RenderSpec::new(Format::Json)),
            "{\n  \"pw\": \"a\\\"b\\nc\"\n}\n"
        );
    }

    #[test]
    fn dotenv_quotes_each_value_so_bash_and_python_dotenv_agree() {
        assert_eq!(
            text(
                &map(&[
                    ("A", "a\"b\nc\\d\te\rf"),
                    ("B", ""),
                    ("C", "x$HOME`id`\\n\"q"),
                    ("D", "it's $5"),
                    ("E", "a\\\\$b"),
                ]),
                &RenderSpec::new(Format::Dotenv)
            ),
            "A=\"a\\\"b\nc\\\\d\te\rf\"\nB=\"\"\nC='x$HOME`id`\\n\"q'\n\
             D=\"it's \\$5\"\nE=\"a\\\\\\\\\\$b\"\n"
        );
    }

    #[test]
    fn dotenv_notes_name_keys_never_values() {
        let data = map(&[
            ("A", "${HOME}"),
            ("B", "it's $5"),
            ("C", "plain"),
            ("D", "a\r\n"),
        ]);
        let notes = dotenv_notes(&data, "value");
        assert_eq!(
            notes,
            vec![
                DotenvNote::Interpolates("A".into()),
                DotenvNote::ShellEscaped("B".into()),
                DotenvNote::CarriageReturn("D".into()),
            ]
        );
        assert!(!format!("{notes:?}").contains("HOME"));
    }

    #[test]
    fn dotenv_refuses_bad_names_and_nul() {
        let spec = RenderSpec::new(Format::Dotenv);
        assert_eq!(
            render(&map(&[("db-password", "x")]), &spec),
            Err(RenderError::BadEnvName("db-password".into()))
        );
        assert_eq!(
            render(&map(&[("1A", "x")]), &spec),
            Err(RenderError::BadEnvName("1A".into()))
        );
        assert_eq!(
            render(&map(&[("A", "x\0y")]), &spec),
            Err(RenderError::Nul("A".into()))
        );
    }

    #[test]
    fn properties_escape_like_java() {
        assert_eq!(
            text(
                &map(&[("a key=:", " lead=x:y#!\\\n\té😀")]),
                &RenderSpec::new(Format::Properties)
            ),
            "a\\ key\\=\\:=\\ lead\\=x\\:y\\#\\!\\\\\\n\\t\\u00E9\\uD83D\\uDE00\n"
        );
    }

    #[test]
    fn yaml_round_trips_awkward_values() {
        let values = [
            ("a", "line1\nline2\n"),
            ("b", "yes"),
            ("c", "0400"),
            ("d", "null"),
            ("e", "- x: y"),
            ("f", "  spaced  "),
            ("g", "quote\"s and 'single'"),
            ("h", "é😀"),
            ("i", ""),
            ("j", "#hash"),
            ("k", "nel\u{85} ls\u{2028} ctl\u{1} del\u{7f} back\\slash"),
            (
                "l",
                "non\u{fffe}chars\u{ffff} nul\u{0} bom\u{feff} astral\u{1f600}",
            ),
            ("yes", "key that YAML 1.1 reads as a bool"),
        ];
        let out = text(&map(&values), &RenderSpec::new(Format::Yaml));
        let back: BTreeMap<String, String> = serde_norway::from_str(&out).unwrap();
        for (k, v) in values {
            assert_eq!(back[k], v, "key {k} in\n{out}");
        }
        assert!(out.contains("\"b\": \"yes\"\n"), "{out}");
        assert!(out.contains("\\u0085"), "{out}");
        assert!(out.contains("\\uFFFE") && out.contains("\\uFFFF"), "{out}");
        assert_eq!(text(&map(&[]), &RenderSpec::new(Format::Yaml)), "{}\n");
    }

    #[test]
    fn templates_see_every_key_and_fail_on_unknown_ones() {
        let data = map(&[("user", "app"), ("db-password", "p\"w")]);
        let mut spec = RenderSpec::new(Format::Template);
        spec.template = Some("u={{ user }} p={{ secret[\"db-password\"] }}\n".into());
        assert_eq!(text(&data, &spec), "u=app p=p\"w\n");
        spec.template = Some("{{ missing }}".into());
        assert!(matches!(
            render(&data, &spec),
            Err(RenderError::Template(_))
        ));
        assert!(check_template("{{ unclosed").is_err());
    }

    #[test]
    fn template_errors_do_not_quote_values() {
        let data = map(&[("pw", "canary-secret")]);
        let mut spec = RenderSpec::new(Format::Template);
        spec.template = Some("{{ pw + 1 }}".into());
        let error = render(&data, &spec).unwrap_err().to_string();
        assert!(!error.contains("canary"), "{error}");
    }

    #[test]
    fn single_values_take_the_selected_key_name() {
        let data = SecretData::Bytes(SecretBytes::from(&b"s3cret"[..]));
        let mut spec = RenderSpec::new(Format::Dotenv);
        spec.single_key = "DB_PASSWORD".into();
        assert_eq!(text(&data, &spec), "DB_PASSWORD=\"s3cret\"\n");
    }
}
