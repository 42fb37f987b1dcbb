//! The `/`-aware matchers behind policy paths and subject names.
//!
//! A path pattern is a list of segments. A segment is `**` (zero or more whole
//! segments) or a glob of literals, `*` (any run of characters), `?` (one
//! character) and identity variables (`{namespace}`, `{serviceaccount}`,
//! `{pod}`). A single-segment glob never matches a `/`: only `**` crosses
//! segment boundaries. A pattern ending in `/*` is a prefix: it matches
//! everything below the prefix, at any depth (the original policy form).
//! `*` alone matches every path.
//!
//! Variables are substituted literally: an identity value is never read as a
//! glob, and a value that is empty or holds a character outside the path
//! alphabet matches nothing (fail closed).

use std::fmt;

use crate::auth::WorkloadIdentity;

/// The longest pattern accepted.
const MAX_PATTERN_LEN: usize = 512;
/// Bounds the backtracking of a pattern: wildcards per pattern.
const MAX_WILDCARDS: usize = 8;
/// Bounds the backtracking of a pattern: `**` segments per pattern.
const MAX_DOUBLE_STARS: usize = 2;

/// An identity field a path pattern may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Namespace,
    ServiceAccount,
    Pod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(String),
    Var(Var),
    Star,
    One,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    DoubleStar,
    Glob(Vec<Token>),
}

/// A validated path pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
    prefix: bool,
}

/// A validated single-name glob (namespace, service account).
#[derive(Clone, PartialEq, Eq)]
pub struct NamePattern {
    raw: String,
    tokens: Vec<Token>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    #[error("pattern {0:?} has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment(String),
    #[error("pattern {0:?} has a '.' or '..' segment")]
    DotSegment(String),
    #[error("pattern {0:?} has a character outside [A-Za-z0-9._-*?{{}}/]")]
    BadCharacter(String),
    #[error("pattern {0:?}: '**' must be a whole segment")]
    BadDoubleStar(String),
    #[error(
        "pattern {0:?} names an unknown variable (use {{namespace}}, {{serviceaccount}} or {{pod}})"
    )]
    UnknownVariable(String),
    #[error("pattern {0:?} has too many wildcards")]
    TooManyWildcards(String),
    #[error(
        "pattern {0:?} has two variables in one segment: ambiguous across identities \
         (`{{namespace}}-{{serviceaccount}}` is `a-b` for a/b-c and a-b/c); separate them with '/'"
    )]
    TwoVariablesInSegment(String),
    #[error("name pattern {0:?} may not contain '/' or variables")]
    BadName(String),
}

pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn parse_tokens(raw: &str, segment: &str, allow_vars: bool) -> Result<Vec<Token>, PatternError> {
    let bad = || PatternError::BadCharacter(raw.to_string());
    let mut tokens = Vec::new();
    let mut rest = segment;
    while let Some(c) = rest.chars().next() {
        match c {
            '*' => {
                if tokens.last() == Some(&Token::Star) {
                    return Err(PatternError::BadDoubleStar(raw.to_string()));
                }
                tokens.push(Token::Star);
                rest = &rest[1..];
            }
            '?' => {
                tokens.push(Token::One);
                rest = &rest[1..];
            }
            '{' => {
                if !allow_vars {
                    return Err(PatternError::BadName(raw.to_string()));
                }
                let end = rest.find('}').ok_or_else(bad)?;
                let var = match &rest[1..end] {
                    "namespace" => Var::Namespace,
                    "serviceaccount" | "serviceAccount" => Var::ServiceAccount,
                    "pod" => Var::Pod,
                    _ => return Err(PatternError::UnknownVariable(raw.to_string())),
                };
                tokens.push(Token::Var(var));
                rest = &rest[end + 1..];
            }
            c if c.is_ascii() && is_name_byte(c as u8) => {
                let len = rest
                    .bytes()
                    .position(|b| !is_name_byte(b))
                    .unwrap_or(rest.len());
                tokens.push(Token::Lit(rest[..len].to_string()));
                rest = &rest[len..];
            }
            _ => return Err(bad()),
        }
    }
    Ok(tokens)
}

fn wildcards(tokens: &[Token]) -> usize {
    tokens
        .iter()
        .filter(|t| matches!(t, Token::Star | Token::One))
        .count()
}

impl PathPattern {
    /// Parses and validates a path pattern.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        if raw.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        if raw == "*" {
            return Ok(Self {
                raw: raw.to_string(),
                segments: Vec::new(),
                prefix: true,
            });
        }
        let (body, prefix) = match raw.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (raw, false),
        };
        let mut segments = Vec::new();
        let (mut stars, mut double) = (0, 0);
        for segment in body.split('/') {
            if segment.is_empty() {
                return Err(PatternError::EmptySegment(raw.to_string()));
            }
            if segment == "." || segment == ".." {
                return Err(PatternError::DotSegment(raw.to_string()));
            }
            if segment == "**" {
                double += 1;
                segments.push(Segment::DoubleStar);
                continue;
            }
            if segment.contains("**") {
                return Err(PatternError::BadDoubleStar(raw.to_string()));
            }
            let tokens = parse_tokens(raw, segment, true)?;
            if tokens.iter().filter(|t| matches!(t, Token::Var(_))).count() > 1 {
                return Err(PatternError::TwoVariablesInSegment(raw.to_string()));
            }
            stars += wildcards(&tokens);
            segments.push(Segment::Glob(tokens));
        }
        if stars > MAX_WILDCARDS || double > MAX_DOUBLE_STARS {
            return Err(PatternError::TooManyWildcards(raw.to_string()));
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
            prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether this pattern matches every path there is, however it is
    /// spelled: `*`, `**`, `*/**`, `**/*`, `**/**`, `?*/**`, ...
    pub fn matches_everything(&self) -> bool {
        // Path segments are never empty, so a glob of wildcards only, with at
        // least one `*` and at most one `?`, matches every segment.
        let every_segment = |tokens: &[Token]| {
            tokens.iter().all(|t| matches!(t, Token::Star | Token::One))
                && tokens.contains(&Token::Star)
                && tokens.iter().filter(|t| **t == Token::One).count() <= 1
        };
        let mut globs = 0;
        let mut unbounded = self.prefix;
        for segment in &self.segments {
            match segment {
                Segment::DoubleStar => unbounded = true,
                Segment::Glob(tokens) if every_segment(tokens) => globs += 1,
                Segment::Glob(_) => return false,
            }
        }
        // The shortest path matched must be one segment, the longest unbounded.
        let shortest = globs + usize::from(self.prefix);
        unbounded && shortest <= 1
    }

    /// The first segment, when it is a plain name every matching path
    /// starts with (`shop` in `shop/*` and `shop/{pod}`; none in `*`,
    /// `**/x`, `s*/x` or `{namespace}/x`): what the policy indexes rules by.
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Glob(tokens)) => match tokens.as_slice() {
                [Token::Lit(name)] => Some(name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the pattern names an identity variable.
    pub fn is_templated(&self) -> bool {
        self.segments.iter().any(|s| match s {
            Segment::Glob(tokens) => tokens.iter().any(|t| matches!(t, Token::Var(_))),
            Segment::DoubleStar => false,
        })
    }

    /// Does `path` (a validated base path, no `#key`) match, for `who`?
    pub fn matches(&self, path: &str, who: &WorkloadIdentity) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        self.matches_segments(&parts, who)
    }

    /// [`PathPattern::matches`] over a path already split at `/`, so one
    /// decision splits the path once for all its rules.
    pub fn matches_segments(&self, parts: &[&str], who: &WorkloadIdentity) -> bool {
        match_segments(&self.segments, parts, self.prefix, who)
    }

    /// Could the pattern match, for `who`, some path strictly below the
    /// folder `folder` (split at `/`; empty for the root)? Errs on the
    /// side of yes where the rest of the pattern is not examined (after a
    /// `**`, or once the folder is used up): it decides whether a listing
    /// may be asked of the store, and each name listed is still decided on
    /// its own.
    pub fn may_match_below(&self, folder: &[&str], who: &WorkloadIdentity) -> bool {
        may_match_below(&self.segments, folder, self.prefix, who)
    }
}

fn may_match_below(
    segments: &[Segment],
    folder: &[&str],
    prefix: bool,
    who: &WorkloadIdentity,
) -> bool {
    let Some((first, tail)) = folder.split_first() else {
        // The folder is used up: something below it matches if the pattern
        // goes on (or is a prefix, matching everything below).
        return prefix || !segments.is_empty();
    };
    match segments.split_first() {
        // The pattern ended with the folder, or above it.
        None => prefix,
        // `**` can take the rest of the folder and one name more.
        Some((Segment::DoubleStar, _)) => true,
        Some((Segment::Glob(tokens), rest)) => {
            match_glob(tokens, first, Some(who)) && may_match_below(rest, tail, prefix, who)
        }
    }
}

fn match_segments(
    segments: &[Segment],
    path: &[&str],
    prefix: bool,
    who: &WorkloadIdentity,
) -> bool {
    match segments.split_first() {
        None => {
            if prefix {
                !path.is_empty()
            } else {
                path.is_empty()
            }
        }
        Some((Segment::DoubleStar, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..], prefix, who))
        }
        Some((Segment::Glob(tokens), rest)) => match path.split_first() {
            Some((first, tail)) => {
                match_glob(tokens, first, Some(who)) && match_segments(rest, tail, prefix, who)
            }
            None => false,
        },
    }
}

fn var_value(var: Var, who: &WorkloadIdentity) -> Option<&str> {
    let value = match var {
        Var::Namespace => who.namespace.as_str(),
        Var::ServiceAccount => who.service_account.as_str(),
        Var::Pod => who.pod_name.as_deref()?,
    };
    // An identity value outside the path alphabet can never name a path of
    // its own: refuse rather than guess.
    (!value.is_empty() && value.bytes().all(is_name_byte) && value != "." && value != "..")
        .then_some(value)
}

fn match_glob(tokens: &[Token], s: &str, who: Option<&WorkloadIdentity>) -> bool {
    match tokens.split_first() {
        None => s.is_empty(),
        Some((Token::Lit(lit), rest)) => s
            .strip_prefix(lit.as_str())
            .is_some_and(|tail| match_glob(rest, tail, who)),
        Some((Token::Var(var), rest)) => who
            .and_then(|w| var_value(*var, w))
            .and_then(|value| s.strip_prefix(value))
            .is_some_and(|tail| match_glob(rest, tail, who)),
        Some((Token::One, rest)) => {
            let mut chars = s.chars();
            chars.next().is_some() && match_glob(rest, chars.as_str(), who)
        }
        Some((Token::Star, rest)) => s
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .any(|i| match_glob(rest, &s[i..], who)),
    }
}

impl NamePattern {
    /// Parses a name or a glob over one name (`*`, `team-*`).
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        if raw.len() > 253 {
            return Err(PatternError::TooLong);
        }
        if raw.contains('/') {
            return Err(PatternError::BadName(raw.to_string()));
        }
        if raw.contains("**") {
            return Err(PatternError::BadDoubleStar(raw.to_string()));
        }
        let tokens = parse_tokens(raw, raw, false)?;
        if wildcards(&tokens) > MAX_WILDCARDS {
            return Err(PatternError::TooManyWildcards(raw.to_string()));
        }
        Ok(Self {
            raw: raw.to_string(),
            tokens,
        })
    }

    /// The name, when the pattern has no wildcard.
    pub fn literal(&self) -> Option<&str> {
        match self.tokens.as_slice() {
            [Token::Lit(lit)] => Some(lit),
            _ => None,
        }
    }

    /// Whether this pattern matches every name.
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::Star]
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Does `name` match?
    pub fn matches(&self, name: &str) -> bool {
        match_glob(&self.tokens, name, None)
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathPattern({:?})", self.raw)
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamePattern({:?})", self.raw)
    }
}

impl TryFrom<String> for PathPattern {
    type Error = PatternError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl TryFrom<String> for NamePattern {
    type Error = PatternError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ns: &str, sa: &str, pod: Option<&str>) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: "i".into(),
            namespace: ns.into(),
            service_account: sa.into(),
            service_account_uid: None,
            pod_name: pod.map(Into::into),
            pod_uid: None,
        }
    }

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(path, &who("shop", "web", Some("web-0")))
    }

    fn below(pattern: &str, folder: &str) -> bool {
        let parts: Vec<&str> = folder.split('/').filter(|p| !p.is_empty()).collect();
        PathPattern::parse(pattern)
            .unwrap()
            .may_match_below(&parts, &who("shop", "web", Some("web-0")))
    }

    #[test]
    fn a_pattern_may_match_below_a_folder_only_if_it_reaches_under_it() {
        assert!(below("shop/*", "shop"));
        assert!(below("shop/*", "shop/db"), "a prefix matches at any depth");
        assert!(below("shop/*", ""), "the root holds shop");
        assert!(below("shop/db", "shop"));
        assert!(below("shop/db", ""));
        assert!(!below("shop/db", "shop/db"), "nothing below an exact path");
        assert!(!below("shop/*", "other"));
        assert!(!below("shop/db", "shop/api"));
        assert!(!below("shop", "shop"));
        assert!(below("*", ""));
        assert!(below("*", "anything/at/all"));
        assert!(below("**/private-key", "shared/ca"));
        assert!(below("shop/**", "shop"));
        assert!(below("{namespace}/{serviceaccount}/*", "shop"));
        assert!(below("{namespace}/{serviceaccount}/*", "shop/web"));
        assert!(!below("{namespace}/{serviceaccount}/*", "ops"));
        assert!(!below("{namespace}/{serviceaccount}/*", "shop/api"));
        assert!(below("shop/d?", "shop"));
        assert!(!below("shop/d?/x", "shop/api"));
    }

    #[test]
    fn exact_prefix_and_everything() {
        assert!(m("app/db", "app/db"));
        assert!(!m("app/db", "app/db/x"));
        assert!(!m("app/db", "app/dbx"));
        assert!(m("app/*", "app/db"));
        assert!(m("app/*", "app/db/deep/er"));
        assert!(!m("app/*", "app"));
        assert!(!m("app/*", "apple/db"));
        assert!(m("*", "anything/at/all"));
    }

    #[test]
    fn single_segment_globs_never_cross_a_slash() {
        assert!(m("app/db-*", "app/db-main"));
        assert!(m("app/db-*", "app/db-"));
        assert!(!m("app/db-*", "app/db-main/x"));
        assert!(m("app/*/tls", "app/x/tls"));
        assert!(!m("app/*/tls", "app/x/y/tls"));
        assert!(!m("app/*/tls", "app/tls"));
        assert!(m("app/d?", "app/db"));
        assert!(!m("app/d?", "app/d"));
        assert!(m("*-prod/key", "db-prod/key"));
        assert!(!m("*-prod/key", "a/db-prod/key"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("app/**/tls", "app/tls"));
        assert!(m("app/**/tls", "app/a/b/c/tls"));
        assert!(!m("app/**/tls", "app/a/b/c/tlsx"));
        assert!(m("**/tls", "x/y/tls"));
        assert!(m("**", "x/y"));
    }

    #[test]
    fn variables_are_literal_and_fail_closed() {
        assert!(m("{namespace}/{serviceaccount}/*", "shop/web/db"));
        assert!(!m("{namespace}/{serviceaccount}/*", "shop/api/db"));
        assert!(m("pods/{pod}", "pods/web-0"));
        let p = PathPattern::parse("{namespace}/*").unwrap();
        // A hostile identity value is never a glob and never crosses '/'.
        assert!(!p.matches("x/db", &who("*", "web", None)));
        assert!(!p.matches("a/b/db", &who("a/b", "web", None)));
        assert!(!p.matches("db", &who("", "web", None)));
        let pod = PathPattern::parse("pods/{pod}").unwrap();
        assert!(!pod.matches("pods/x", &who("a", "b", None)));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "/app",
            "app//db",
            "app/",
            "app/../db",
            "./db",
            "app/%2e",
            "app/d b",
            "app/db#key",
            "app/a**",
            "app/{nope}",
            "app/{namespace",
            "app/\0",
            "a/*/*/*/*/*/*/*/*/*/x",
            "**/**/**",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a/b", "{namespace}", "a**", "a b"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_spelling_of_everything_is_recognised() {
        for all in ["*", "**", "*/**", "**/*", "**/**", "?*/**", "**/*?"] {
            let p = PathPattern::parse(all).unwrap();
            assert!(p.matches_everything(), "{all}");
            for path in ["a", "a/b", "x/y/z/w"] {
                assert!(p.matches(path, &who("n", "s", None)), "{all} {path}");
            }
        }
        for some in [
            "*/*",
            "*/**/*",
            "a/*",
            "**/a",
            "?/**",
            "??*/**",
            "*/**/x",
            "{namespace}/**",
            "a",
        ] {
            assert!(
                !PathPattern::parse(some).unwrap().matches_everything(),
                "{some}"
            );
        }
    }

    #[test]
    fn two_variables_in_one_segment_are_refused() {
        for bad in [
            "{namespace}-{serviceaccount}/*",
            "x/{namespace}{pod}",
            "a/{pod}.{namespace}-*",
        ] {
            assert!(
                matches!(
                    PathPattern::parse(bad),
                    Err(PatternError::TwoVariablesInSegment(_))
                ),
                "{bad}"
            );
        }
        assert!(PathPattern::parse("{namespace}/{serviceaccount}-x/*").is_ok());
    }

    #[test]
    fn name_globs() {
        let p = NamePattern::parse("team-*").unwrap();
        assert!(p.matches("team-a") && !p.matches("teams") && p.literal().is_none());
        assert_eq!(NamePattern::parse("web").unwrap().literal(), Some("web"));
        assert!(NamePattern::parse("*").unwrap().matches_everything());
    }
}
