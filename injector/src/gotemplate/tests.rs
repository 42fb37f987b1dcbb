//! Each supported form: the converted template, rendered by the sidecar's
//! own code, gives the bytes consul-template writes. The expected outputs
//! are written from Go's `text/template` and consul-template's documented
//! semantics (no Go toolchain here to run them).

use std::collections::BTreeMap;

use coffer::{SecretBytes, SecretData};
use coffer_sidecar::render::{Format, RenderSpec, render};

use super::*;

fn rendered(template: &str, pairs: &[(&str, &str)]) -> String {
    let data = SecretData::Map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::from(v.as_bytes())))
            .collect::<BTreeMap<_, _>>(),
    );
    let spec = RenderSpec {
        template: Some(template.to_string()),
        ..RenderSpec::new(Format::Template)
    };
    let bytes = render(&data, &spec).unwrap_or_else(|e| panic!("{template}: {e}"));
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Converts with `{{ }}` and renders.
fn go(source: &str, pairs: &[(&str, &str)]) -> String {
    let converted = convert(source, "{{", "}}").unwrap_or_else(|e| panic!("{source}: {e}"));
    rendered(&converted.template, pairs)
}

fn refusal(source: &str) -> Refusal {
    convert(source, "{{", "}}").unwrap_err()
}

#[test]
fn kv_v2_keys_with_trim_markers_as_in_vaults_env_example() {
    // vault/website/.../injector/examples.mdx, "Environment Variable Example".
    let source = "{{ with secret \"secret/data/web\" -}}\n  export api_key=\"{{ .Data.data.payments_api_key }}\"\n{{- end }}\n";
    assert_eq!(
        go(source, &[("payments_api_key", "k-1")]),
        "export api_key=\"k-1\"\n"
    );
    let converted = convert(source, "{{", "}}").unwrap();
    assert_eq!(converted.path.as_deref(), Some("secret/data/web"));
}

#[test]
fn plain_keys_as_in_vaults_database_example() {
    let source = "{{- with secret \"database/creds/db-app\" -}}\npostgres://{{ .Data.username }}:{{ .Data.password }}@postgres:5432/appdb?sslmode=disable\n{{- end }}\n";
    assert_eq!(
        go(source, &[("username", "v-1"), ("password", "p")]),
        "postgres://v-1:p@postgres:5432/appdb?sslmode=disable\n"
    );
}

#[test]
fn range_goes_in_go_map_order() {
    // Go ranges over a map in sorted key order: bytes, so "A" < "a" < "b".
    let source = "{{ with secret \"secret/data/app\" }}{{ range $k, $v := .Data.data }}{{ $k }}={{ $v }}\n{{ end }}{{ end }}";
    assert_eq!(
        go(source, &[("b", "2"), ("a", "3"), ("A", "1")]),
        "A=1\na=3\nb=2\n"
    );
    let values = "{{ with secret \"secret/data/app\" }}{{ range $v := .Data.data }}[{{ $v }}]{{ end }}{{ end }}";
    assert_eq!(go(values, &[("b", "2"), ("a", "1")]), "[1][2]");
}

#[test]
fn printf_with_strings() {
    let source = "{{ with secret \"secret/data/db\" }}{{ printf \"%s:%v@%%\" .Data.data.user .Data.data.pass }}{{ end }}";
    assert_eq!(go(source, &[("user", "u"), ("pass", "p")]), "u:p@%");
}

#[test]
fn to_json_escapes_as_go() {
    let source = "{{ with secret \"secret/data/db\" }}{{ .Data.data | toJSON }}{{ end }}";
    assert_eq!(
        go(source, &[("pass", "a<b&c>'\"")]),
        r#"{"pass":"a\u003cb\u0026c\u003e'\""}"#
    );
    let one = "{{ with secret \"secret/data/db\" }}{{ toJSON .Data.data.pass }}{{ end }}";
    assert_eq!(go(one, &[("pass", "x\ny")]), r#""x\ny""#);
}

#[test]
fn to_json_pretty_indents_two_spaces() {
    let source = "{{ with secret \"secret/data/db\" }}{{ toJSONPretty .Data.data }}{{ end }}";
    assert_eq!(
        go(source, &[("b", "2"), ("a", "1")]),
        "{\n  \"a\": \"1\",\n  \"b\": \"2\"\n}"
    );
}

#[test]
fn base64_both_ways_piped_and_called() {
    let source = "{{ with secret \"secret/data/db\" }}{{ .Data.data.blob | base64Decode }}|{{ base64Encode .Data.data.user }}|{{ base64Encode (printf \"%s:%s\" .Data.data.user .Data.data.user) }}{{ end }}";
    assert_eq!(
        go(source, &[("blob", "aGVsbG8="), ("user", "u")]),
        "hello|dQ==|dTp1"
    );
}

#[test]
fn pki_cert_fields_are_the_brokers_certificate_keys() {
    let source = "{{ with pkiCert \"pki/issue/web\" \"common_name=web.shop.svc\" }}{{ .Data.certificate }}\n{{ .Data.private_key }}\n{{ .Data.issuing_ca }}{{ end }}";
    let pairs = [("tls.crt", "CERT"), ("tls.key", "KEY"), ("ca.crt", "CA")];
    assert_eq!(go(source, &pairs), "CERT\nKEY\nCA");
    let secret =
        "{{ with secret \"pki/issue/web\" \"common_name=a\" }}{{ .Data.certificate }}{{ end }}";
    assert_eq!(go(secret, &pairs), "CERT");
}

#[test]
fn other_delimiters_leave_braces_as_text() {
    let source = "[[ with secret \"secret/data/web\" ]]{{ not go }} {% raw %} {#[[ .Data.data.user ]][[ end ]]{";
    let converted = convert(source, "[[", "]]").unwrap();
    assert_eq!(
        rendered(&converted.template, &[("user", "u")]),
        "{{ not go }} {% raw %} {#u{"
    );
}

#[test]
fn a_map_prints_as_go_prints_it() {
    let source = "{{ with secret \"secret/data/x\" }}{{ .Data.data }}{{ end }}";
    assert_eq!(go(source, &[("b", "2"), ("a", "1")]), "map[a:1 b:2]");
}

#[test]
fn index_reads_keys_that_are_not_identifiers() {
    let source = "{{ with secret \"secret/data/x\" }}{{ index .Data.data \"my-key\" }}{{ end }}";
    assert_eq!(go(source, &[("my-key", "v")]), "v");
}

#[test]
fn comments_vanish_and_trim() {
    assert_eq!(go("a {{- /* c */ -}} b\n", &[]), "ab\n");
    assert_eq!(go("a {{/* c */}} b", &[]), "a  b");
}

#[test]
fn default_templates_write_vault_k8s_bytes() {
    // vault-k8s agent/config.go: DefaultMapTemplate and DefaultJSONTemplate.
    let (map, note) = default_template("database/creds/app", false);
    assert_eq!(note, None);
    assert_eq!(
        rendered(&map, &[("username", "u"), ("password", "p")]),
        "password: p\nusername: u\n"
    );
    let (json, _) = default_template("database/creds/app", true);
    assert_eq!(
        rendered(&json, &[("username", "u&")]),
        "{\"username\":\"u\\u0026\"}\n"
    );
    let (map, note) = default_template("secret/data/web", false);
    assert!(note.is_some());
    assert_eq!(
        rendered(&map, &[("b", "2"), ("a", "1")]),
        "data: map[a:1 b:2]\n"
    );
    let (json, _) = default_template("secret/data/web", true);
    assert_eq!(rendered(&json, &[("a", "1")]), "{\"data\":{\"a\":\"1\"}}\n");
}

#[test]
fn outside_the_subset_is_refused_with_line_construct_and_rewrite() {
    let e =
        refusal("{{ with secret \"secret/data/x\" }}\n{{ if .Data.data.a }}x{{ end }}{{ end }}");
    assert_eq!(e.line, 2);
    assert_eq!(e.construct, "{{ if }}");
    assert!(e.rewrite.contains("{% if"), "{e}");
    for (source, construct) in [
        (
            "{{ with secret \"secret/data/x\" }}{{ .Data.metadata.version }}{{ end }}",
            ".Data.metadata",
        ),
        (
            "{{ with secret \"secret/data/x\" }}{{ .Data.data.a | toUpper }}{{ end }}",
            "the function toUpper",
        ),
        (
            "{{ with secret \"secret/data/x\" }}{{ printf \"%d\" .Data.data.a }}{{ end }}",
            "the printf verb %d",
        ),
        (
            "{{ with secret \"secret/data/x\" }}x{{ else }}y{{ end }}",
            "{{ else }}",
        ),
        (
            "{{ with secret \"a/b\" }}{{ end }}{{ with secret \"c/d\" }}{{ end }}",
            "a second secret (\"c/d\" after \"a/b\")",
        ),
        ("{{ .Data.data.a }}", "a .field outside {{ with secret }}"),
        (
            "{{ range secrets \"secret/metadata/\" }}{{ . }}{{ end }}",
            "{{ range }} over a listing (secrets, ls, tree…)",
        ),
        (
            "{{ with secret \"secret/data/x?version=2\" }}{{ end }}",
            "the query of \"secret/data/x?version=2\" (a version pin or parameters)",
        ),
        (
            "{{ with secret \"secret/data/x\" }}{{ range .Data.data }}{{ . }}{{ end }}{{ end }}",
            "{{ range }} without $key, $value :=",
        ),
        (
            "{{ with secret \"secret/data/x\" }}",
            "a block without its {{ end }}",
        ),
        ("{{ with secret \"secret/data/x\" ", "{{ without its }}"),
    ] {
        assert_eq!(refusal(source).construct, construct, "{source}");
    }
}

#[test]
fn a_missing_key_is_an_error_not_no_value() {
    let converted = convert(
        "{{ with secret \"secret/data/x\" }}{{ .Data.data.nope }}{{ end }}",
        "{{",
        "}}",
    )
    .unwrap();
    let data = SecretData::Bytes(SecretBytes::from(&b"x"[..]));
    let spec = RenderSpec {
        template: Some(converted.template),
        ..RenderSpec::new(Format::Template)
    };
    assert!(render(&data, &spec).is_err());
}
