//! Where in a query its parse error is. The parser Herd uses reports what is
//! wrong but not where, so the Graph page finds the place itself: a lexer
//! error is found by lexing ever longer prefixes until the same error
//! appears; a grammar error is at the first token after which no completion
//! of the query parses (an LR parser refuses exactly at the first token that
//! cannot continue a valid query; the completions tried are a fixed list of
//! operands and closing brackets). No position is given when none is found.

use promql_parser::parser;

/// Queries longer than this get no position: the search parses each prefix.
const MAX_QUERY_BYTES: usize = 4096;
/// Tokens searched for a grammar error.
const MAX_TOKENS: usize = 400;

/// The byte offset in `query` of its parse error, if it has one and it can be found.
pub fn error_position(query: &str) -> Option<usize> {
    if query.len() > MAX_QUERY_BYTES || query.trim().is_empty() {
        return None;
    }
    if let Err(message) = parser::lexer(query) {
        return lexer_error_position(query, &message);
    }
    if parser::parse(query).is_ok() {
        return None;
    }
    grammar_error_position(query)
}

fn lexer_error_position(query: &str, message: &str) -> Option<usize> {
    if message == "unclosed left parenthesis" {
        return unmatched_open_paren(query);
    }
    // Errors found only when the input runs out are at its end.
    if ["end of input", "not terminated", "can not be at the end", "unterminated"].iter().any(|m| message.contains(m)) {
        return Some(query.len());
    }
    // Otherwise the shortest prefix with the same error ends just after the offending character.
    let mut boundaries = query.char_indices().map(|(i, c)| i + c.len_utf8());
    boundaries.find(|&end| parser::lexer(&query[..end]).err().as_deref() == Some(message)).map(|end| {
        let last = query[..end].chars().next_back().map_or(0, char::len_utf8);
        end - last
    })
}

/// The last `(` that no `)` closes, outside strings and comments.
fn unmatched_open_paren(query: &str) -> Option<usize> {
    let mut open = Vec::new();
    for token in tokens(query) {
        match &query[token.clone()] {
            "(" => open.push(token.start),
            ")" => {
                open.pop();
            }
            _ => {}
        }
    }
    open.pop()
}

fn grammar_error_position(query: &str) -> Option<usize> {
    let tokens: Vec<std::ops::Range<usize>> = tokens(query).take(MAX_TOKENS + 1).collect();
    if tokens.len() > MAX_TOKENS {
        return None;
    }
    for token in &tokens {
        if !viable(&query[..token.end]) {
            return Some(token.start);
        }
    }
    // Every prefix can go on, the whole cannot stop: the query ends too early.
    Some(query.len())
}

/// Whether some completion of `prefix` parses.
fn viable(prefix: &str) -> bool {
    // Inserted before the closing brackets, then appended after them.
    const INNER: &[&str] = &["", " x", " \"x\"", "=\"x\"", "x=\"x\"", " 1", "[1m]", " x[1m]", "5m", " 5m"];
    const OUTER: &[&str] = &["", " (x)", " x", " 1"];
    let closers = closing_brackets(prefix);
    INNER
        .iter()
        .any(|inner| OUTER.iter().any(|outer| parser::parse(&format!("{prefix}{inner}{closers}{outer}")).is_ok()))
}

/// The brackets that close what `prefix` leaves open, innermost first.
fn closing_brackets(prefix: &str) -> String {
    let mut open = Vec::new();
    for token in tokens(prefix) {
        match &prefix[token] {
            "(" => open.push(')'),
            "[" => open.push(']'),
            "{" => open.push('}'),
            ")" | "]" | "}" => {
                open.pop();
            }
            _ => {}
        }
    }
    open.iter().rev().collect()
}

/// A rough PromQL tokenizer, enough to cut a query at token boundaries:
/// strings (with escapes), words (names, numbers, durations), two-character
/// operators and single characters; whitespace and `#` comments skipped.
fn tokens(query: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let bytes = query.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            let c = *bytes.get(i)?;
            if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'#' {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            } else {
                break;
            }
        }
        let start = i;
        let c = bytes[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i += 1;
            while let Some(&d) = bytes.get(i) {
                i += 1;
                if d == b'\\' && c != b'`' {
                    i += 1;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.') || c >= 0x80 {
            while bytes
                .get(i)
                .is_some_and(|&d| d.is_ascii_alphanumeric() || matches!(d, b'_' | b':' | b'.') || d >= 0x80)
            {
                i += 1;
            }
        } else if matches!(&bytes[i..bytes.len().min(i + 2)], b"==" | b"!=" | b">=" | b"<=" | b"=~" | b"!~") {
            i += 2;
        } else {
            i += 1;
        }
        let end = i.min(bytes.len());
        // Cut only at character boundaries.
        let end = (end..=bytes.len()).find(|&e| query.is_char_boundary(e)).unwrap_or(bytes.len());
        i = end;
        Some(start..end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, expected: Option<usize>) {
        assert_eq!(error_position(query), expected, "{query:?}");
    }

    #[test]
    fn errors_are_found_where_they_are() {
        check("sum(rate(x[5m]))", None);
        check("sum(", Some(3));
        check("sum(rate(x[5m])", Some(3));
        check(r#"up{job="a""#, Some(10));
        check("1 +* 2", Some(3));
        check("up +", Some(4));
        check("up)", Some(2));
        check("up $ 1", Some(3));
        check("sum by (job) (x) )", Some(17));
        check(r#"x{a="é"} @@ 1"#, Some(11));
        check("", None);
    }
}
