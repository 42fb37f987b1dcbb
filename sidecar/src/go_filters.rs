//! Template filters that give consul-template's functions' bytes, so a
//! template converted from Vault Agent (`coffer-injector`'s `gotemplate`)
//! writes the same file:
//!
//! | filter | consul-template | bytes |
//! | ------ | --------------- | ----- |
//! | `go_json` | `toJSON` | Go's `json.Marshal`: compact, keys in byte order, `<` `>` `&` U+2028 U+2029 escaped as `\u003c` ... |
//! | `go_json_pretty` | `toJSONPretty` | Go's `json.MarshalIndent(v, "", "  ")`, the same escapes |
//! | `b64encode` | `base64Encode` | standard alphabet, padded |
//! | `b64decode` | `base64Decode` | standard alphabet, padded; the result must be UTF-8 |
//!
//! minijinja's own `tojson` escapes `'` too and leaves U+2028/U+2029 alone,
//! so it cannot stand in for `toJSON`. Numbers other than integers (no
//! secret holds one) are refused rather than formatted unlike Go. Errors
//! never quote the value.

use base64::Engine as _;
use minijinja::{Error, ErrorKind, Value};

/// Adds the filters to `env`.
pub(crate) fn register(env: &mut minijinja::Environment<'_>) {
    env.add_filter("go_json", |value: Value| go_json(&value, false));
    env.add_filter("go_json_pretty", |value: Value| go_json(&value, true));
    env.add_filter("b64encode", |text: String| {
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    });
    env.add_filter("b64decode", |text: String| -> Result<String, Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "b64decode: not base64"))?;
        String::from_utf8(bytes)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "b64decode: not UTF-8"))
    });
}

/// `value` as Go's encoding/json writes it.
fn go_json(value: &Value, pretty: bool) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, pretty.then_some(0))?;
    Ok(out)
}

fn not_json(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("go_json: a {what} has no JSON form here"),
    )
}

/// Writes `value`; `indent` is the depth when pretty-printing.
fn write_json(out: &mut String, value: &Value, indent: Option<usize>) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match i64::try_from(value.clone()) {
            Ok(n) => out.push_str(&n.to_string()),
            // Go's float formatting is not reproduced: secrets are strings.
            Err(_) => return Err(not_json("float")),
        },
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            // Go sorts map keys by their bytes.
            keys.sort_by_key(|key| key.to_string());
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent.map(|d| d + 1));
                write_string(out, &key.to_string());
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_json(out, &value.get_item(key)?, indent.map(|d| d + 1))?;
            }
            if !keys.is_empty() {
                newline(out, indent);
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent.map(|d| d + 1));
                write_json(out, item, indent.map(|d| d + 1))?;
            }
            if !items.is_empty() {
                newline(out, indent);
            }
            out.push(']');
        }
        _ => return Err(not_json("value of this kind")),
    }
    Ok(())
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(depth) = indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
}

/// A JSON string as Go writes it: `\n` `\r` `\t` (and since Go 1.22 `\b`
/// `\f`) short, other controls `\u00XX`, and the HTML-safe escapes of `<`
/// `>` `&` and U+2028/U+2029.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn render(source: &str, pairs: &[(&str, &str)]) -> Result<String, Error> {
        let mut env = minijinja::Environment::new();
        register(&mut env);
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.render_str(source, minijinja::context! { secret => map })
    }

    // Expected bytes written from Go's documented encoding/json behaviour:
    // sorted keys, HTMLEscape of < > &, U+2028/U+2029 escaped, \n \r \t
    // (and since Go 1.22 \b \f) short, other controls \u00XX.
    #[test]
    fn go_json_matches_go_marshal() {
        let out = render(
            "{{ secret | go_json }}",
            &[
                ("b", "<a & b>"),
                ("a", "line\nnext\t\"q\" \u{2028}'"),
                ("c", "\u{1}"),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"a":"line\nnext\t\"q\" \u2028'","b":"\u003ca \u0026 b\u003e","c":"\u0001"}"#
        );
        assert_eq!(
            render("{{ secret.a | go_json }}", &[("a", "x>y")]).unwrap(),
            r#""x\u003ey""#
        );
    }

    #[test]
    fn go_json_pretty_matches_go_marshal_indent() {
        let out = render("{{ secret | go_json_pretty }}", &[("b", "2"), ("a", "&")]).unwrap();
        assert_eq!(out, "{\n  \"a\": \"\\u0026\",\n  \"b\": \"2\"\n}");
        assert_eq!(render("{{ secret | go_json_pretty }}", &[]).unwrap(), "{}");
    }

    #[test]
    fn base64_round_trips_with_padding() {
        assert_eq!(
            render("{{ secret.a | b64encode }}", &[("a", "hi?")]).unwrap(),
            "aGk/"
        );
        assert_eq!(
            render("{{ secret.a | b64encode }}", &[("a", "h")]).unwrap(),
            "aA=="
        );
        assert_eq!(
            render("{{ secret.a | b64decode }}", &[("a", "aGVsbG8=")]).unwrap(),
            "hello"
        );
    }

    #[test]
    fn b64decode_errors_never_quote_the_value() {
        let e = render("{{ secret.a | b64decode }}", &[("a", "s3cr3t!!")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidOperation);
        assert!(!format!("{e:#}").contains("s3cr3t"), "{e:#}");
    }
}
