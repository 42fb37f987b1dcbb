//! Splitting a Go template into text and actions, and an action into
//! tokens, as Go's `text/template/parse` lexer does for the subset the
//! converter reads.
//!
//! Trim markers are applied here with Go's rule: `{{- ` removes the ASCII
//! white space (space, tab, CR, LF) that ends the text before it, ` -}}`
//! the white space that starts the text after it. The converter then emits
//! minijinja tags without markers, so minijinja's own trimming (which also
//! removes Unicode white space) never runs.

use super::Refusal;

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text written as it is.
    Text(String),
    /// The inside of an action, without delimiters and trim markers.
    Action { body: String, line: usize },
}

/// Go's white space for trim markers.
fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits `source` into text and actions, trim markers applied.
pub(crate) fn pieces(source: &str, left: &str, right: &str) -> Result<Vec<Piece>, Refusal> {
    let mut out: Vec<Piece> = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    let line_of = |rest: &str| source[..source.len() - rest.len()].matches('\n').count() + 1;
    while let Some(at) = rest.find(left) {
        let mut text = &rest[..at];
        if trim_next {
            text = text.trim_start_matches(is_go_space);
        }
        let line = line_of(&rest[at..]);
        let mut inner = &rest[at + left.len()..];
        let trim_left = inner.starts_with('-') && inner[1..].starts_with(is_go_space);
        if trim_left {
            text = text.trim_end_matches(is_go_space);
            inner = &inner[1..];
        }
        out.push(Piece::Text(text.to_string()));
        let (body, trim_right, after) = action_body(inner, right).ok_or_else(|| Refusal {
            line,
            construct: format!("{left} without its {right}"),
            rewrite: "close the action".into(),
        })?;
        out.push(Piece::Action {
            body: body.to_string(),
            line,
        });
        trim_next = trim_right;
        rest = after;
    }
    let mut text = rest;
    if trim_next {
        text = text.trim_start_matches(is_go_space);
    }
    out.push(Piece::Text(text.to_string()));
    out.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
    Ok(out)
}

/// The action body up to the right delimiter (strings may hold it), whether
/// it ends with a trim marker, and the text after the delimiter.
fn action_body<'a>(inner: &'a str, right: &str) -> Option<(&'a str, bool, &'a str)> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    if inner.trim_start_matches(is_go_space).starts_with("/*") {
        // A comment runs to `*/`, then the delimiter.
        let end = inner.find("*/")? + 2;
        let tail = &inner[end..];
        let (trim, tail) = match tail.strip_prefix(" -") {
            Some(t) if t.starts_with(right) => (true, t),
            _ => (false, tail),
        };
        let after = tail.strip_prefix(right)?;
        return Some(("", trim, after));
    }
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'`' => {
                i += 1 + inner[i + 1..].find('`')? + 1;
            }
            _ => {
                let here = &inner[i..];
                if let Some(after) = here.strip_prefix(right) {
                    return Some((&inner[..i], false, after));
                }
                if let Some(t) = here.strip_prefix('-')
                    && t.starts_with(right)
                    && i > 0
                    && is_go_space(bytes[i - 1] as char)
                {
                    return Some((&inner[..i], true, &t[right.len()..]));
                }
                i += here.chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    None
}

/// A token of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A keyword or function name.
    Ident(String),
    /// `.a.b.c` (the names after each dot; `.` alone is empty).
    Field(Vec<String>),
    /// `$name` (`$` alone is empty), with any `.field`s after it.
    Var(String, Vec<String>),
    /// A string literal, unescaped.
    Str(String),
    /// `|`
    Pipe,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `:=` or `=`
    Declare,
    /// `,`
    Comma,
    /// A number, boolean or other literal the subset does not use.
    Other(String),
}

/// Splits an action body into tokens.
pub(crate) fn tokens(body: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let name = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let fields = |i: &mut usize| {
        let mut names = Vec::new();
        while *i < chars.len() && chars[*i] == '.' {
            *i += 1;
            names.push(name(i));
        }
        names
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if is_go_space(c) => i += 1,
            '|' => {
                out.push(Token::Pipe);
                i += 1;
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                out.push(Token::Declare);
                i += 2;
            }
            '=' => {
                out.push(Token::Declare);
                i += 1;
            }
            '.' => {
                let names = fields(&mut i);
                out.push(Token::Field(if names == [""] { vec![] } else { names }));
            }
            '$' => {
                i += 1;
                let var = name(&mut i);
                out.push(Token::Var(var, fields(&mut i)));
            }
            '"' => {
                i += 1;
                let mut text = String::new();
                loop {
                    let c = *chars.get(i).ok_or("an unterminated string")?;
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let e = *chars.get(i).ok_or("an unterminated string")?;
                            i += 1;
                            text.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                other => return Err(format!("the string escape \\{other}")),
                            });
                        }
                        c => text.push(c),
                    }
                }
                out.push(Token::Str(text));
            }
            '`' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                if i == chars.len() {
                    return Err("an unterminated raw string".into());
                }
                out.push(Token::Str(chars[start..i].iter().collect()));
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => out.push(Token::Ident(name(&mut i))),
            _ => {
                let start = i;
                while i < chars.len() && !is_go_space(chars[i]) && !"|()".contains(chars[i]) {
                    i += 1;
                }
                out.push(Token::Other(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(source: &str) -> Vec<Piece> {
        pieces(source, "{{", "}}").unwrap()
    }

    #[test]
    fn trim_markers_remove_ascii_white_space_only() {
        assert_eq!(
            texts("a \n\t{{- x -}} \r\n b"),
            vec![
                Piece::Text("a".into()),
                Piece::Action {
                    body: " x ".into(),
                    line: 2
                },
                Piece::Text("b".into()),
            ]
        );
        // A no-break space is not Go white space.
        assert_eq!(texts("a\u{a0}{{- x }}")[0], Piece::Text("a\u{a0}".into()));
    }

    #[test]
    fn a_dash_without_a_space_is_not_a_trim_marker() {
        assert_eq!(
            texts("a {{-3}}")[1],
            Piece::Action {
                body: "-3".into(),
                line: 1
            }
        );
    }

    #[test]
    fn strings_may_hold_the_delimiter_and_comments_vanish() {
        assert_eq!(
            texts("{{ \"}}\" }}{{/* c }} */}}z"),
            vec![
                Piece::Action {
                    body: " \"}}\" ".into(),
                    line: 1
                },
                Piece::Action {
                    body: String::new(),
                    line: 1
                },
                Piece::Text("z".into()),
            ]
        );
    }

    #[test]
    fn tokens_of_a_pipeline() {
        assert_eq!(
            tokens(r#"range $k, $v := .Data.data | toJSON "a\"b""#).unwrap(),
            vec![
                Token::Ident("range".into()),
                Token::Var("k".into(), vec![]),
                Token::Comma,
                Token::Var("v".into(), vec![]),
                Token::Declare,
                Token::Field(vec!["Data".into(), "data".into()]),
                Token::Pipe,
                Token::Ident("toJSON".into()),
                Token::Str("a\"b".into()),
            ]
        );
    }
}
