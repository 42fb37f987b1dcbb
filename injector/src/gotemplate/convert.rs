//! Go template actions → minijinja (see the module docs of `gotemplate`).

use super::{
    Refusal,
    lex::{Piece, Token, pieces, tokens},
};

/// How a Vault path's `.Data` is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `MOUNT/data/…`: `.Data.data` holds the keys.
    KvV2,
    /// `.Data` holds the keys (KV v1, database credentials, …).
    Plain,
    /// `pkiCert`, or `secret` of a `…/issue/…` path.
    Pki,
}

impl SecretKind {
    /// The kind of `path` when read with `secret`.
    pub fn of(path: &str) -> Self {
        match path.split_once('/') {
            Some((_, rest)) if rest.starts_with("data/") => Self::KvV2,
            _ if path.contains("/issue/") => Self::Pki,
            _ => Self::Plain,
        }
    }
}

/// A converted template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The minijinja source.
    pub template: String,
    /// The Vault path of its `with secret`, if it has one.
    pub path: Option<String>,
}

/// vault-k8s's default template for `path` (`map` or `json`), as the
/// minijinja that writes the same bytes; for KV v2, Vault's `metadata`
/// entry is not written (the broker passes none), and the note says so.
pub fn default_template(path: &str, json: bool) -> (String, Option<&'static str>) {
    let kind = SecretKind::of(path);
    let note = (kind == SecretKind::KvV2)
        .then_some("Vault's `metadata` entry (version, created_time) is not written");
    let template = match (json, kind) {
        // `{{ .Data | toJSON }}\n`
        (true, SecretKind::KvV2) => "{\"data\":{{ secret | go_json }}}\n".to_string(),
        (true, _) => "{{ secret | go_json }}\n".to_string(),
        // `{{ range $k, $v := .Data }}{{ $k }}: {{ $v }}\n{{ end }}`
        (false, SecretKind::KvV2) => format!("data: {}\n", go_map("secret")),
        (false, _) => format!(
            "{{% for k, v in {} %}}{{{{ k }}}}: {{{{ v }}}}\n{{% endfor %}}",
            sorted("secret")
        ),
    };
    (template, note)
}

/// `expr`'s pairs in Go's map order (keys by bytes).
fn sorted(expr: &str) -> String {
    format!("{expr} | dictsort(case_sensitive=true)")
}

/// A map printed as Go's fmt prints `map[string]interface{}`.
fn go_map(expr: &str) -> String {
    format!(
        "map[{{% for k, v in {} %}}{{{{ k }}}}:{{{{ v }}}}{{% if not loop.last %}} {{% endif %}}{{% endfor %}}]",
        sorted(expr)
    )
}

/// What an expression yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Str,
    Map,
}

/// An open block.
enum Block {
    With,
    Range(Vec<String>),
}

struct Converter {
    kind: Option<SecretKind>,
    path: Option<String>,
    blocks: Vec<Block>,
    out: String,
    line: usize,
}

/// Converts `source`, read with the delimiters `left` and `right`.
pub fn convert(source: &str, left: &str, right: &str) -> Result<Converted, Refusal> {
    let mut c = Converter {
        kind: None,
        path: None,
        blocks: Vec::new(),
        out: String::new(),
        line: 1,
    };
    for piece in pieces(source, left, right)? {
        match piece {
            Piece::Text(text) => c.text(&text),
            Piece::Action { body, line } => {
                c.line = line;
                c.action(&body)?;
            }
        }
    }
    if !c.blocks.is_empty() {
        return Err(c.refuse("a block without its {{ end }}", "close it with {{ end }}"));
    }
    Ok(Converted {
        template: c.out,
        path: c.path,
    })
}

impl Converter {
    fn refuse(&self, construct: impl Into<String>, rewrite: impl Into<String>) -> Refusal {
        Refusal {
            line: self.line,
            construct: construct.into(),
            rewrite: rewrite.into(),
        }
    }

    /// Text as it is: a `{` that could open a minijinja tag is written as
    /// an expression.
    fn text(&mut self, text: &str) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '{' && chars.peek().is_none_or(|n| matches!(n, '{' | '%' | '#')) {
                self.out.push_str("{{ \"{\" }}");
            } else {
                self.out.push(c);
            }
        }
    }

    fn action(&mut self, body: &str) -> Result<(), Refusal> {
        let tokens = tokens(body).map_err(|what| self.refuse(what, "write a plain \"string\""))?;
        let Some(first) = tokens.first() else {
            return Ok(()); // a comment
        };
        match first {
            Token::Ident(word) => match word.as_str() {
                "with" => self.with(&tokens[1..]),
                "range" => self.range(&tokens[1..]),
                "end" if tokens.len() == 1 => match self.blocks.pop() {
                    Some(Block::With) => Ok(()),
                    Some(Block::Range(_)) => {
                        self.out.push_str("{% endfor %}");
                        Ok(())
                    }
                    None => Err(self.refuse("{{ end }} without a block", "remove it")),
                },
                "else" => Err(self.refuse(
                    "{{ else }}",
                    "no else branch: the secret is always there (the sidecar waits for it); \
                     write the minijinja {% if %} yourself in coffer.dev/template-<name>",
                )),
                "if" => Err(self.refuse(
                    "{{ if }}",
                    "write it in minijinja in coffer.dev/template-<name>: \
                     {% if secret[\"KEY\"] == \"x\" %}…{% endif %}",
                )),
                "define" | "template" | "block" | "break" | "continue" => Err(self.refuse(
                    format!("{{{{ {word} }}}}"),
                    "write the file's text directly in one template",
                )),
                _ => self.print(&tokens),
            },
            _ => self.print(&tokens),
        }
    }

    fn with(&mut self, tokens: &[Token]) -> Result<(), Refusal> {
        let (kind, path) = match tokens {
            [Token::Ident(f), Token::Str(path), params @ ..]
                if (f == "secret" || f == "pkiCert")
                    && params.iter().all(|p| matches!(p, Token::Str(_))) =>
            {
                let kind = if f == "pkiCert" {
                    SecretKind::Pki
                } else {
                    SecretKind::of(path)
                };
                (kind, path.clone())
            }
            _ => {
                return Err(self.refuse(
                    "{{ with }} of something other than secret \"PATH\" or pkiCert \"PATH\"",
                    "read one secret per file: {{ with secret \"PATH\" }}…{{ end }}",
                ));
            }
        };
        if path.contains('?') {
            return Err(self.refuse(
                format!("the query of {path:?} (a version pin or parameters)"),
                "the broker serves the current version: drop the query; pin with cofferctl rollback",
            ));
        }
        if self.blocks.iter().any(|b| matches!(b, Block::Range(_))) {
            return Err(self.refuse(
                "{{ with secret }} inside {{ range }}",
                "read the secret outside the loop",
            ));
        }
        match &self.path {
            Some(other) if *other != path => {
                return Err(self.refuse(
                    format!("a second secret ({path:?} after {other:?})"),
                    "one secret per file: give each secret its own agent-inject-secret-<name> and template",
                ));
            }
            _ => {}
        }
        self.kind = Some(kind);
        self.path = Some(path);
        self.blocks.push(Block::With);
        Ok(())
    }

    fn range(&mut self, tokens: &[Token]) -> Result<(), Refusal> {
        let lists = |t: &Token| matches!(t, Token::Ident(f) if ["secrets", "ls", "tree", "services", "nodes"].contains(&f.as_str()));
        if tokens.iter().any(lists) {
            return Err(self.refuse(
                "{{ range }} over a listing (secrets, ls, tree…)",
                "Coffer renders a file from one secret: give each secret its own \
                 coffer.dev/secret-<name> (and template), or read them all through the SDK",
            ));
        }
        let (vars, rest) = match tokens {
            [
                Token::Var(k, kf),
                Token::Comma,
                Token::Var(v, vf),
                Token::Declare,
                rest @ ..,
            ] if kf.is_empty() && vf.is_empty() && !k.is_empty() && !v.is_empty() => {
                (vec![k.clone(), v.clone()], rest)
            }
            [Token::Var(v, vf), Token::Declare, rest @ ..] if vf.is_empty() && !v.is_empty() => {
                (vec![String::new(), v.clone()], rest)
            }
            _ => {
                return Err(self.refuse(
                    "{{ range }} without $key, $value :=",
                    "{{ range $k, $v := .Data.data }}…{{ $k }}…{{ $v }}…{{ end }}",
                ));
            }
        };
        let (expr, ty) = self.pipeline(rest)?;
        if ty != Type::Map {
            return Err(self.refuse(
                "{{ range }} over a value",
                "range over .Data.data (KV v2) or .Data",
            ));
        }
        let names: Vec<String> = vars
            .iter()
            .map(|v| {
                if v.is_empty() {
                    "_".into()
                } else {
                    format!("v_{v}")
                }
            })
            .collect();
        self.out.push_str(&format!(
            "{{% for {}, {} in {} %}}",
            names[0],
            names[1],
            sorted(&expr)
        ));
        self.blocks.push(Block::Range(
            vars.into_iter().filter(|v| !v.is_empty()).collect(),
        ));
        Ok(())
    }

    fn print(&mut self, tokens: &[Token]) -> Result<(), Refusal> {
        if tokens.contains(&Token::Declare) {
            return Err(self.refuse("a variable declaration", "use the value where it is needed"));
        }
        let (expr, ty) = self.pipeline(tokens)?;
        match ty {
            Type::Str => self.out.push_str(&format!("{{{{ {expr} }}}}")),
            Type::Map => self.out.push_str(&go_map(&expr)),
        }
        Ok(())
    }

    /// `cmd | cmd | …`: each result is the last argument of the next.
    fn pipeline(&self, tokens: &[Token]) -> Result<(String, Type), Refusal> {
        let mut result: Option<(String, Type)> = None;
        for command in split_top(tokens, &Token::Pipe) {
            result = Some(self.command(command, result)?);
        }
        result.ok_or_else(|| self.refuse("an empty pipeline", "name a value"))
    }

    fn command(
        &self,
        tokens: &[Token],
        piped: Option<(String, Type)>,
    ) -> Result<(String, Type), Refusal> {
        let Some(Token::Ident(name)) = tokens.first() else {
            if tokens.len() == 1 && piped.is_none() {
                return self.operand(&tokens[0]);
            }
            return Err(self.refuse(
                "a value followed by arguments",
                "call a function: toJSON .Data.data",
            ));
        };
        let mut args = Vec::new();
        let mut i = 1;
        while i < tokens.len() {
            if tokens[i] == Token::Open {
                let end =
                    matching(tokens, i).ok_or_else(|| self.refuse("an unclosed (", "close it"))?;
                args.push(self.pipeline(&tokens[i + 1..end])?);
                i = end + 1;
            } else {
                args.push(self.operand(&tokens[i])?);
                i += 1;
            }
        }
        args.extend(piped);
        let one = |filter: &str| match args.as_slice() {
            [(e, _)] => Ok((format!("({e} | {filter})"), Type::Str)),
            _ => Err(self.refuse(
                format!("{name} with {} arguments", args.len()),
                format!("{name} takes one value"),
            )),
        };
        let one_str = |filter: &str| match args.as_slice() {
            [(_, Type::Map)] => Err(self.refuse(
                format!("{name} of a map"),
                format!("{name} of one key: .Data.data.KEY"),
            )),
            _ => one(filter),
        };
        match name.as_str() {
            "toJSON" => one("go_json"),
            "toJSONPretty" => one("go_json_pretty"),
            "base64Encode" => one_str("b64encode"),
            "base64Decode" => one_str("b64decode"),
            "printf" => self.printf(tokens, &args),
            "index" => match args.as_slice() {
                [(map, Type::Map), (key, Type::Str)] => Ok((format!("{map}[{key}]"), Type::Str)),
                _ => Err(self.refuse(
                    "index of something other than a map and a key",
                    "index .Data.data \"KEY\"",
                )),
            },
            "toUpper" | "toLower" | "trimSpace" => Err(self.refuse(
                format!("the function {name}"),
                "Go and minijinja differ on some characters; write it in minijinja in \
                 coffer.dev/template-<name> (| upper, | lower, | trim) and check the output",
            )),
            _ => Err(self.refuse(
                format!("the function {name}"),
                "not in the converted subset (secret, pkiCert, printf, toJSON, toJSONPretty, \
                 base64Encode, base64Decode, index): write the template in minijinja in \
                 coffer.dev/template-<name> (docs/sidecar.md, \"Templates\")",
            )),
        }
    }

    fn printf(&self, tokens: &[Token], args: &[(String, Type)]) -> Result<(String, Type), Refusal> {
        let Some(Token::Str(format)) = tokens.get(1) else {
            return Err(self.refuse(
                "printf without a literal format",
                "printf \"%s\" .Data.data.KEY",
            ));
        };
        let mut parts: Vec<String> = Vec::new();
        let mut literal = String::new();
        let mut values = args[1..].iter();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => literal.push('%'),
                Some('s' | 'v') => {
                    let Some((value, Type::Str)) = values.next() else {
                        return Err(self.refuse(
                            "printf with fewer string values than verbs",
                            "one value per %s",
                        ));
                    };
                    if !literal.is_empty() {
                        parts.push(json_string(&std::mem::take(&mut literal)));
                    }
                    parts.push(value.clone());
                }
                other => {
                    return Err(self.refuse(
                        format!(
                            "the printf verb %{}",
                            other.map(String::from).unwrap_or_default()
                        ),
                        "only %s, %v and %% are converted: values are strings",
                    ));
                }
            }
        }
        if values.next().is_some() {
            return Err(self.refuse("printf with more values than verbs", "one value per %s"));
        }
        if !literal.is_empty() || parts.is_empty() {
            parts.push(json_string(&literal));
        }
        Ok((format!("({})", parts.join(" ~ ")), Type::Str))
    }

    fn operand(&self, token: &Token) -> Result<(String, Type), Refusal> {
        match token {
            Token::Str(text) => Ok((json_string(text), Type::Str)),
            Token::Var(name, fields) if fields.is_empty() => {
                let declared = self
                    .blocks
                    .iter()
                    .any(|b| matches!(b, Block::Range(vars) if vars.contains(name)));
                if declared {
                    Ok((format!("v_{name}"), Type::Str))
                } else {
                    Err(self.refuse(
                        format!("${name}"),
                        "only the variables of {{ range $k, $v := … }}",
                    ))
                }
            }
            Token::Field(fields) => self.field(fields),
            Token::Ident(f) => self.command(&[Token::Ident(f.clone())], None),
            other => Err(self.refuse(format!("{other:?}"), "name a secret's key: .Data.data.KEY")),
        }
    }

    fn field(&self, fields: &[String]) -> Result<(String, Type), Refusal> {
        if self.blocks.iter().any(|b| matches!(b, Block::Range(_))) {
            return Err(self.refuse(
                "a .field inside {{ range }} (the dot is the loop's value there)",
                "use the loop's $k and $v",
            ));
        }
        let Some(kind) = self.kind.filter(|_| !self.blocks.is_empty()) else {
            return Err(self.refuse(
                "a .field outside {{ with secret }}",
                "read it inside {{ with secret \"PATH\" }}",
            ));
        };
        let key = |k: &str| (format!("secret[{}]", json_string(k)), Type::Str);
        let map = || ("secret".to_string(), Type::Map);
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        match (kind, names.as_slice()) {
            (SecretKind::KvV2, ["Data", "data"]) => Ok(map()),
            (SecretKind::KvV2, ["Data", "data", k]) => Ok(key(k)),
            (SecretKind::KvV2, ["Data", "metadata", ..]) => Err(self.refuse(
                ".Data.metadata",
                "the broker passes no Vault metadata: `cofferctl versions PATH` shows versions",
            )),
            (SecretKind::KvV2, ["Data"]) => Err(self.refuse(
                ".Data of a KV v2 secret (it holds Vault's metadata)",
                "use .Data.data",
            )),
            (SecretKind::Pki, ["Data", k]) => match *k {
                "certificate" => Ok(key("tls.crt")),
                "private_key" => Ok(key("tls.key")),
                "issuing_ca" => Ok(key("ca.crt")),
                _ => Err(self.refuse(
                    format!(".Data.{k} of a certificate"),
                    "the broker's certificate has .Data.certificate, .Data.private_key and .Data.issuing_ca",
                )),
            },
            (SecretKind::Plain, ["Data"]) => Ok(map()),
            (SecretKind::Plain, ["Data", k]) => Ok(key(k)),
            _ => Err(self.refuse(
                format!(".{}", names.join(".")),
                "the secret's keys are .Data.data.KEY (KV v2) or .Data.KEY; lease fields are the broker's (cofferctl leases)",
            )),
        }
    }
}

/// A JSON string literal, which minijinja reads as the same string.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Splits at `sep` outside parentheses.
fn split_top<'a>(tokens: &'a [Token], sep: &Token) -> Vec<&'a [Token]> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Open => depth += 1,
            Token::Close => depth -= 1,
            t if t == sep && depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tokens[start..]);
    parts
}

/// The index of the `)` closing the `(` at `open`.
fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}
