//! Alertmanager's label matchers: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"` (values quoted or bare, lists
//! comma-separated and optionally in braces), and the old `match` /
//! `match_re` maps. Regexes are anchored as Alertmanager anchors them.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<regex::Regex>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatcherError {
    #[error("{0:?} is not a matcher (expected e.g. severity=\"critical\", team=~\"db|ops\", env!=\"dev\")")]
    Syntax(String),
    #[error("{name:?} is not a valid label name")]
    LabelName { name: String },
    #[error("invalid regex {value:?} in matcher for {name:?}: {message}")]
    Regex { name: String, value: String, message: String },
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, MatcherError> {
        if !valid_label_name(name) {
            return Err(MatcherError::LabelName { name: name.to_owned() });
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                MatcherError::Regex { name: name.to_owned(), value: value.to_owned(), message: e.to_string() }
            })?),
            _ => None,
        };
        Ok(Self { name: name.to_owned(), op, value: value.to_owned(), regex })
    }

    /// Whether the label `name` (missing counts as "") satisfies this matcher.
    pub fn matches_value(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            _ => false,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.name).map_or("", String::as_str))
    }

    pub fn is_regex(&self) -> bool {
        matches!(self.op, MatchOp::Regex | MatchOp::NotRegex)
    }

    pub fn is_equal(&self) -> bool {
        matches!(self.op, MatchOp::Equal | MatchOp::Regex)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// True when every matcher matches.
pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// `{a="b", c=~"d"}` as Alertmanager prints matcher lists.
pub fn display_list(matchers: &[Matcher]) -> String {
    let parts: Vec<String> = matchers.iter().map(Matcher::to_string).collect();
    format!("{{{}}}", parts.join(","))
}

pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one or more comma-separated matchers, optionally in braces.
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>, MatcherError> {
    let trimmed = text.trim();
    let inner = match trimmed.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}').ok_or_else(|| MatcherError::Syntax(text.to_owned()))?,
        None => trimmed,
    };
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in inner.chars() {
        if in_quotes {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                current.push(c);
            }
            ',' => {
                if !current.trim().is_empty() {
                    out.push(parse_matcher(&current)?);
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if in_quotes {
        return Err(MatcherError::Syntax(text.to_owned()));
    }
    if !current.trim().is_empty() {
        out.push(parse_matcher(&current)?);
    }
    Ok(out)
}

/// Parses a single matcher such as `severity="critical"` or `team=~db|ops`.
pub fn parse_matcher(text: &str) -> Result<Matcher, MatcherError> {
    let syntax = || MatcherError::Syntax(text.trim().to_owned());
    let text = text.trim();
    let op_start = text.find(['=', '!']).ok_or_else(syntax)?;
    let name = text[..op_start].trim();
    let rest = &text[op_start..];
    let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
        (MatchOp::Regex, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (MatchOp::Equal, v)
    } else {
        return Err(syntax());
    };
    let value = value.trim();
    let value = if value.starts_with('"') { unquote(value).ok_or_else(syntax)? } else { value.to_owned() };
    Matcher::new(name, op, &value)
}

fn unquote(quoted: &str) -> Option<String> {
    let body = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn string_forms() {
        let m = parse_matchers(r#"{severity="critical", team=~"db|ops",env!=dev, host!~"test-.*"}"#).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].name.as_str(), m[0].op, m[0].value.as_str()), ("severity", MatchOp::Equal, "critical"));
        assert_eq!((m[1].op, m[1].value.as_str()), (MatchOp::Regex, "db|ops"));
        assert_eq!((m[2].op, m[2].value.as_str()), (MatchOp::NotEqual, "dev"));
        assert_eq!(m[3].op, MatchOp::NotRegex);
        let alert = labels(&[("severity", "critical"), ("team", "db"), ("host", "prod-1")]);
        assert!(all_match(&m, &alert));
        let other = labels(&[("severity", "critical"), ("team", "dbx"), ("host", "prod-1")]);
        assert!(!all_match(&m, &other), "regexes are anchored");
        let testing = labels(&[("severity", "critical"), ("team", "db"), ("host", "test-1")]);
        assert!(!all_match(&m, &testing));
        // A quoted value may contain commas and escaped quotes.
        let m = parse_matchers(r#"msg="a, \"b\"""#).unwrap();
        assert_eq!(m[0].value, r#"a, "b""#);
        // A missing label matches "" and nothing else.
        assert!(parse_matcher("absent=\"\"").unwrap().matches(&alert));
        assert!(!parse_matcher("absent=~\".+\"").unwrap().matches(&alert));
        assert_eq!(display_list(&parse_matchers("a=b,c=~d").unwrap()), r#"{a="b",c=~"d"}"#);
    }

    #[test]
    fn bad_matchers_are_refused() {
        for text in ["severity", "=x", "9a=b", "a=~\"(\"", "a=\"unterminated", "{a=b"] {
            assert!(parse_matchers(text).is_err(), "{text} parsed");
        }
    }
}
