//! The part of Go's text/template that Prometheus alert labels and
//! annotations use: `{{ $labels.name }}`, `{{ $value }}`,
//! `{{ $externalLabels.name }}`, `{{ $externalURL }}`, the same through `.`
//! (`.Labels.name`, `.Value`), pipelines (`{{ $value | humanize }}`), and the
//! functions `humanize`, `humanize1024`, `humanizePercentage`, `humanizeDuration`, `printf`,
//! `toUpper`, `toLower`, `title`, and `{{ if }}`/`{{ else }}`/`{{ else if }}`/`{{ end }}`
//! with `eq ne lt le gt ge and or not` (numbers compare as numbers, whatever
//! their Go type). Other control actions (`range`, `with`, `define`) and
//! variables are refused when parsing, so a rule that needs them fails its
//! check instead of rendering wrongly. No crate renders Go templates exactly;
//! this is small enough to test completely. It reads nothing but its input.
//!
//! The built-in alert router renders Alertmanager's notification templates
//! with the same renderer: `Template::parse_notification` additionally accepts
//! any field path on `.` (`.GroupLabels.alertname`, `.CommonLabels`,
//! `.Status`, `.ExternalURL`, `.Alerts.Firing`, the label sets' `.SortedPairs`,
//! `.Names`, `.Values`), `{{ range }}` (with `{{ else }}`), `{{ . }}`, `len`,
//! and Alertmanager's `join`, `safeHtml`, `trimSpace`, `reReplaceAll`, `match`
//! (refused in rule templates, as Prometheus refuses them); `render_value`
//! renders it over a `TemplateValue` tree built by the router.

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed action (missing \"}}}}\")")]
    Unclosed,
    #[error("unterminated quoted string in {0:?}")]
    UnterminatedString(String),
    #[error(
        "{0:?} is not supported by Herd's template renderer (supported: $labels, $value, $externalLabels, humanize, humanize1024, humanizePercentage, humanizeDuration, printf, toUpper, toLower, title)"
    )]
    Unsupported(String),
    #[error("empty command in {0:?}")]
    Empty(String),
    #[error("function {0:?} not defined")]
    UnknownFunction(String),
    #[error("{function}: {message}")]
    Call { function: String, message: String },
    #[error("unexpected {0:?}")]
    Unexpected(String),
    #[error("unexpected EOF: {{{{ if }}}} without {{{{ end }}}}")]
    UnclosedIf,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Default)]
pub struct TemplateData<'a> {
    pub labels: BTreeMap<&'a str, &'a str>,
    pub external_labels: BTreeMap<&'a str, &'a str>,
    pub external_url: &'a str,
    pub value: f64,
}

/// The data of a notification template (Alertmanager's `template.Data`):
/// strings, lists (`.Alerts`) and maps (`.GroupLabels`, `.Annotations`).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateValue {
    Str(String),
    List(Vec<TemplateValue>),
    Map(BTreeMap<String, TemplateValue>),
}

impl TemplateValue {
    /// A map of strings, e.g. a label set.
    pub fn string_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        TemplateValue::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), TemplateValue::Str(v.to_owned()))).collect())
    }

    /// The value at a field path; on a list of alerts, `Firing` and `Resolved`
    /// select those of that `Status`, as Alertmanager's `Alerts` methods do.
    fn lookup(&self, path: &[String]) -> Option<TemplateValue> {
        let Some((first, rest)) = path.split_first() else { return Some(self.clone()) };
        match self {
            TemplateValue::Map(map) => match map.get(first) {
                Some(value) => value.lookup(rest),
                // Alertmanager's KV methods: `.SortedPairs`, `.Names`, `.Values`.
                None => match first.as_str() {
                    "SortedPairs" => TemplateValue::List(
                        map.iter()
                            .map(|(k, v)| {
                                TemplateValue::Map(BTreeMap::from([
                                    ("Name".to_owned(), TemplateValue::Str(k.clone())),
                                    ("Value".to_owned(), v.clone()),
                                ]))
                            })
                            .collect(),
                    )
                    .lookup(rest),
                    "Names" => TemplateValue::List(map.keys().cloned().map(TemplateValue::Str).collect()).lookup(rest),
                    "Values" => TemplateValue::List(map.values().cloned().collect()).lookup(rest),
                    _ => None,
                },
            },
            // `Pairs.Names` and `Pairs.Values`.
            TemplateValue::List(items) if first == "Names" || first == "Values" => {
                let field = if first == "Names" { "Name" } else { "Value" };
                let picked = items
                    .iter()
                    .filter_map(|item| match item {
                        TemplateValue::Map(m) => m.get(field).cloned(),
                        _ => None,
                    })
                    .collect();
                TemplateValue::List(picked).lookup(rest)
            }
            TemplateValue::List(items) if first == "Firing" || first == "Resolved" => {
                let wanted = first.to_lowercase();
                let selected = items
                    .iter()
                    .filter(|item| {
                        matches!(item, TemplateValue::Map(m) if m.get("Status") == Some(&TemplateValue::Str(wanted.clone())))
                    })
                    .cloned()
                    .collect();
                TemplateValue::List(selected).lookup(rest)
            }
            _ => None,
        }
    }

    /// Go's `fmt` printing: maps as `map[k:v]`, lists as `[a b]`.
    fn go_string(&self) -> String {
        match self {
            TemplateValue::Str(s) => s.clone(),
            TemplateValue::List(items) => {
                format!("[{}]", items.iter().map(TemplateValue::go_string).collect::<Vec<_>>().join(" "))
            }
            TemplateValue::Map(map) => {
                let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}:{}", v.go_string())).collect();
                format!("map[{}]", items.join(" "))
            }
        }
    }
}

/// Which dialect a template is parsed in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Syntax {
    /// Prometheus alert labels and annotations.
    Rule,
    /// Alertmanager notification templates.
    Notification,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// Commands of a pipeline; each command's output is the last argument of the next.
    Action(Vec<Command>),
    If {
        condition: Vec<Command>,
        then: Vec<Part>,
        otherwise: Vec<Part>,
    },
    /// `{{ range pipeline }}body{{ else }}otherwise{{ end }}` (notification templates only).
    Range {
        over: Vec<Command>,
        body: Vec<Part>,
        otherwise: Vec<Part>,
    },
}

/// Text and actions before control structure is built.
enum Item {
    Text(String),
    Action(String),
}

/// How a block of parts ended.
enum BlockEnd {
    Eof,
    Else(String),
    End,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call { function: String, args: Vec<Operand> },
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Labels(Option<String>),
    ExternalLabels(Option<String>),
    ExternalUrl,
    Value,
    Str(String),
    Number(f64),
    /// A field path on `.` (notification templates only); empty for `.` itself.
    Field(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Bool(bool),
    Tree(TemplateValue),
    Missing,
}

impl Val {
    /// Go's truth: false, 0, "" and no value are false.
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Num(v) => *v != 0.0,
            Val::Bool(b) => *b,
            Val::Tree(TemplateValue::Str(s)) => !s.is_empty(),
            Val::Tree(TemplateValue::List(items)) => !items.is_empty(),
            Val::Tree(TemplateValue::Map(map)) => !map.is_empty(),
            Val::Missing => false,
        }
    }

    fn from_tree(value: Option<TemplateValue>) -> Val {
        match value {
            Some(TemplateValue::Str(s)) => Val::Str(s),
            Some(tree) => Val::Tree(tree),
            None => Val::Missing,
        }
    }
}

const FUNCTIONS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "printf",
    "toUpper",
    "toLower",
    "title",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "len",
    "join",
    "safeHtml",
    "trimSpace",
    "reReplaceAll",
    "match",
];

/// Alertmanager's template functions: notification templates only.
const NOTIFICATION_FUNCTIONS: &[&str] = &["join", "safeHtml", "trimSpace", "reReplaceAll", "match"];

impl Template {
    /// Parses a Prometheus alert label or annotation template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Self::parse_as(text, Syntax::Rule)
    }

    /// Parses an Alertmanager notification template (see the module docs).
    pub fn parse_notification(text: &str) -> Result<Self, TemplateError> {
        Self::parse_as(text, Syntax::Notification)
    }

    fn parse_as(text: &str, syntax: Syntax) -> Result<Self, TemplateError> {
        let mut items = Vec::new();
        let mut rest = text;
        let mut trim_next_text = false;
        while !rest.is_empty() {
            let Some(open) = rest.find("{{") else {
                push_text(&mut items, rest, trim_next_text, false);
                break;
            };
            let mut inner_start = open + 2;
            let trim_before = rest[inner_start..].starts_with("- ");
            if trim_before {
                inner_start += 1;
            }
            push_text(&mut items, &rest[..open], trim_next_text, trim_before);
            let close = rest[inner_start..].find("}}").ok_or(TemplateError::Unclosed)? + inner_start;
            let mut inner = &rest[inner_start..close];
            trim_next_text = inner.ends_with(" -");
            if trim_next_text {
                inner = &inner[..inner.len() - 1];
            }
            let inner = inner.trim();
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                items.push(Item::Action(inner.to_owned()));
            }
            rest = &rest[close + 2..];
        }
        let mut items = items.into_iter();
        let (parts, _) = build_block(&mut items, false, syntax)?;
        Ok(Template { source: text.to_owned(), parts })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template. Like Prometheus, a failing function renders the
    /// whole result as `<error expanding template: ...>` rather than failing the rule.
    pub fn render(&self, data: &TemplateData<'_>) -> String {
        let mut out = String::new();
        match render_parts(&self.parts, data, None, &mut out) {
            Ok(()) => out,
            Err(err) => format!("<error expanding template: {err}>"),
        }
    }

    /// Renders a notification template with `.` bound to `dot`. A failing
    /// function is an error, as Alertmanager fails the notification.
    pub fn render_value(&self, dot: &TemplateValue) -> Result<String, TemplateError> {
        let mut out = String::new();
        render_parts(&self.parts, &TemplateData::default(), Some(dot), &mut out)?;
        Ok(out)
    }
}

fn render_parts(
    parts: &[Part],
    data: &TemplateData<'_>,
    dot: Option<&TemplateValue>,
    out: &mut String,
) -> Result<(), TemplateError> {
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Action(commands) => match run_pipeline(commands, data, dot)? {
                Val::Str(s) => out.push_str(&s),
                Val::Num(v) => out.push_str(&go_float(v, None)),
                Val::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                Val::Tree(tree) => out.push_str(&tree.go_string()),
                // missingkey=zero: Prometheus prints a missing label as "".
                Val::Missing => {}
            },
            Part::If { condition, then, otherwise } => {
                let branch = if run_pipeline(condition, data, dot)?.truthy() { then } else { otherwise };
                render_parts(branch, data, dot, out)?;
            }
            Part::Range { over, body, otherwise } => {
                // Go ranges over a map's values in key order.
                let items: Vec<TemplateValue> = match run_pipeline(over, data, dot)? {
                    Val::Tree(TemplateValue::List(items)) => items,
                    Val::Tree(TemplateValue::Map(map)) => map.into_values().collect(),
                    Val::Missing => Vec::new(),
                    other => {
                        return Err(TemplateError::Call {
                            function: "range".into(),
                            message: format!("range can't iterate over {other:?}"),
                        });
                    }
                };
                if items.is_empty() {
                    render_parts(otherwise, data, dot, out)?;
                }
                for item in &items {
                    render_parts(body, data, Some(item), out)?;
                }
            }
        }
    }
    Ok(())
}

/// Parts up to the end of the input, or (inside an `if`) up to its `else` or `end`.
fn build_block(
    items: &mut std::vec::IntoIter<Item>,
    inside_if: bool,
    syntax: Syntax,
) -> Result<(Vec<Part>, BlockEnd), TemplateError> {
    let mut parts = Vec::new();
    while let Some(item) = items.next() {
        let action = match item {
            Item::Text(text) => {
                parts.push(Part::Text(text));
                continue;
            }
            Item::Action(action) => action,
        };
        let (keyword, rest) = action.split_once(char::is_whitespace).unwrap_or((action.as_str(), ""));
        match keyword {
            "if" => parts.push(build_if(rest.trim(), items, syntax)?),
            "range" if syntax == Syntax::Notification => parts.push(build_range(rest.trim(), items, syntax)?),
            "else" if inside_if => return Ok((parts, BlockEnd::Else(rest.trim().to_owned()))),
            "end" if inside_if && rest.trim().is_empty() => return Ok((parts, BlockEnd::End)),
            "else" | "end" => return Err(TemplateError::Unexpected(format!("{{{{ {action} }}}}"))),
            _ => parts.push(Part::Action(parse_pipeline(&action, syntax)?)),
        }
    }
    if inside_if { Err(TemplateError::UnclosedIf) } else { Ok((parts, BlockEnd::Eof)) }
}

fn build_range(over: &str, items: &mut std::vec::IntoIter<Item>, syntax: Syntax) -> Result<Part, TemplateError> {
    if over.contains(":=") {
        return Err(TemplateError::Unsupported(format!("{{{{ range {over} }}}}")));
    }
    let over = parse_pipeline(over, syntax)?;
    let (body, end) = build_block(items, true, syntax)?;
    let otherwise = match end {
        BlockEnd::End => Vec::new(),
        BlockEnd::Else(rest) if rest.is_empty() => match build_block(items, true, syntax)? {
            (otherwise, BlockEnd::End) => otherwise,
            _ => return Err(TemplateError::Unexpected("{{ else }} after {{ else }}".into())),
        },
        BlockEnd::Else(rest) => return Err(TemplateError::Unsupported(format!("{{{{ else {rest} }}}}"))),
        BlockEnd::Eof => return Err(TemplateError::UnclosedIf),
    };
    Ok(Part::Range { over, body, otherwise })
}

fn build_if(condition: &str, items: &mut std::vec::IntoIter<Item>, syntax: Syntax) -> Result<Part, TemplateError> {
    let condition = parse_pipeline(condition, syntax)?;
    let (then, end) = build_block(items, true, syntax)?;
    let otherwise = match end {
        BlockEnd::End => Vec::new(),
        BlockEnd::Else(rest) if rest.is_empty() => match build_block(items, true, syntax)? {
            (otherwise, BlockEnd::End) => otherwise,
            _ => return Err(TemplateError::Unexpected("{{ else }} after {{ else }}".into())),
        },
        // `else if c`: an `if` nested in the else branch, closed by the same `end`.
        BlockEnd::Else(rest) => match rest.strip_prefix("if") {
            Some(condition) if condition.starts_with(char::is_whitespace) => {
                vec![build_if(condition.trim(), items, syntax)?]
            }
            _ => return Err(TemplateError::Unsupported(format!("{{{{ else {rest} }}}}"))),
        },
        BlockEnd::Eof => return Err(TemplateError::UnclosedIf),
    };
    Ok(Part::If { condition, then, otherwise })
}

fn push_text(items: &mut Vec<Item>, text: &str, trim_start: bool, trim_end: bool) {
    let mut text = text;
    if trim_start {
        text = text.trim_start();
    }
    if trim_end {
        text = text.trim_end();
    }
    if !text.is_empty() {
        items.push(Item::Text(text.to_owned()));
    }
}

/// Splits on whitespace and `|` outside quotes.
fn tokens(action: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push("|".to_owned());
        } else if c == '"' || c == '`' {
            let mut token = String::from(c);
            chars.next();
            let mut closed = false;
            while let Some(ch) = chars.next() {
                token.push(ch);
                if ch == '\\' && c == '"' {
                    if let Some(escaped) = chars.next() {
                        token.push(escaped);
                    }
                } else if ch == c {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(TemplateError::UnterminatedString(action.to_owned()));
            }
            out.push(token);
        } else {
            let mut token = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '|' {
                    break;
                }
                token.push(ch);
                chars.next();
            }
            out.push(token);
        }
    }
    Ok(out)
}

fn parse_pipeline(action: &str, syntax: Syntax) -> Result<Vec<Command>, TemplateError> {
    let tokens = tokens(action)?;
    if let Some(first) = tokens.first()
        && matches!(first.as_str(), "range" | "with" | "define" | "template" | "block")
    {
        return Err(TemplateError::Unsupported(format!("{{{{ {action} }}}}")));
    }
    if tokens.iter().any(|t| t.contains(":=") || t == "=") {
        return Err(TemplateError::Unsupported(format!("{{{{ {action} }}}}")));
    }
    let mut commands = Vec::new();
    for words in tokens.split(|t| t == "|") {
        let (head, args) = words.split_first().ok_or_else(|| TemplateError::Empty(action.to_owned()))?;
        if syntax == Syntax::Rule && NOTIFICATION_FUNCTIONS.contains(&head.as_str()) {
            return Err(TemplateError::UnknownFunction(head.clone()));
        }
        let command = if FUNCTIONS.contains(&head.as_str()) {
            let args = args.iter().map(|a| parse_operand(a, syntax)).collect::<Result<_, _>>()?;
            Command::Call { function: head.clone(), args }
        } else if head.starts_with(|c: char| c.is_ascii_alphabetic()) && !matches!(head.as_str(), "true" | "false") {
            return Err(TemplateError::UnknownFunction(head.clone()));
        } else if !args.is_empty() {
            return Err(TemplateError::Unsupported(format!("{{{{ {action} }}}}")));
        } else {
            Command::Operand(parse_operand(head, syntax)?)
        };
        commands.push(command);
    }
    Ok(commands)
}

fn parse_operand(token: &str, syntax: Syntax) -> Result<Operand, TemplateError> {
    if let Some(quoted) = token.strip_prefix('`') {
        return Ok(Operand::Str(quoted.trim_end_matches('`').to_owned()));
    }
    if token.starts_with('"') {
        return unquote(token).map(Operand::Str).ok_or_else(|| TemplateError::UnterminatedString(token.to_owned()));
    }
    if let Ok(number) = token.parse::<f64>() {
        return Ok(Operand::Number(number));
    }
    let field = |rest: &str| -> Result<Option<String>, TemplateError> {
        match rest {
            "" => Ok(None),
            _ => match rest.strip_prefix('.') {
                Some(name) if !name.is_empty() && !name.contains('.') => Ok(Some(name.to_owned())),
                _ => Err(TemplateError::Unsupported(token.to_owned())),
            },
        }
    };
    for (prefix, make) in [
        ("$labels", Operand::Labels as fn(Option<String>) -> Operand),
        (".Labels", Operand::Labels),
        ("$externalLabels", Operand::ExternalLabels),
        (".ExternalLabels", Operand::ExternalLabels),
    ] {
        if let Some(rest) = token.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with('.'))
        {
            return Ok(make(field(rest)?));
        }
    }
    match token {
        "$value" | ".Value" => Ok(Operand::Value),
        "$externalURL" | ".ExternalURL" => Ok(Operand::ExternalUrl),
        "." if syntax == Syntax::Notification => Ok(Operand::Field(Vec::new())),
        _ if syntax == Syntax::Notification && token.starts_with('.') => {
            let path: Vec<String> = token[1..].split('.').map(str::to_owned).collect();
            if path.iter().any(|name| name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_')) {
                return Err(TemplateError::Unsupported(token.to_owned()));
            }
            Ok(Operand::Field(path))
        }
        _ => Err(TemplateError::Unsupported(token.to_owned())),
    }
}

/// A Go double-quoted string literal's value.
fn unquote(token: &str) -> Option<String> {
    let body = token.strip_prefix('"')?.strip_suffix('"')?;
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
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            _ => return None,
        }
    }
    Some(out)
}

fn operand_value(operand: &Operand, data: &TemplateData<'_>, dot: Option<&TemplateValue>) -> Val {
    // A notification template reads everything from `.`.
    if let Some(dot) = dot {
        let path = |first: &str, key: &Option<String>| -> Vec<String> {
            std::iter::once(first.to_owned()).chain(key.iter().cloned()).collect()
        };
        let path = match operand {
            Operand::Labels(key) => path("Labels", key),
            Operand::ExternalLabels(key) => path("ExternalLabels", key),
            Operand::ExternalUrl => vec!["ExternalURL".to_owned()],
            Operand::Value => vec!["Value".to_owned()],
            Operand::Field(path) => path.clone(),
            Operand::Str(s) => return Val::Str(s.clone()),
            Operand::Number(n) => return Val::Num(*n),
        };
        return Val::from_tree(dot.lookup(&path));
    }
    let lookup = |map: &BTreeMap<&str, &str>, key: &Option<String>| match key {
        Some(key) => map.get(key.as_str()).map_or(Val::Missing, |v| Val::Str((*v).to_owned())),
        None => Val::Str(go_map(map)),
    };
    match operand {
        Operand::Labels(key) => lookup(&data.labels, key),
        Operand::ExternalLabels(key) => lookup(&data.external_labels, key),
        Operand::ExternalUrl => Val::Str(data.external_url.to_owned()),
        Operand::Value => Val::Num(data.value),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Number(n) => Val::Num(*n),
        Operand::Field(_) => Val::Missing,
    }
}

/// Go prints a map as `map[a:1 b:2]`.
fn go_map(map: &BTreeMap<&str, &str>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", items.join(" "))
}

fn run_pipeline(
    commands: &[Command],
    data: &TemplateData<'_>,
    dot: Option<&TemplateValue>,
) -> Result<Val, TemplateError> {
    let mut previous: Option<Val> = None;
    for command in commands {
        let value = match command {
            Command::Operand(operand) => operand_value(operand, data, dot),
            Command::Call { function, args } => {
                let mut values: Vec<Val> = args.iter().map(|a| operand_value(a, data, dot)).collect();
                values.extend(previous.take());
                call(function, values)?
            }
        };
        previous = Some(value);
    }
    Ok(previous.unwrap_or(Val::Missing))
}

fn call(function: &str, args: Vec<Val>) -> Result<Val, TemplateError> {
    let err = |message: String| TemplateError::Call { function: function.to_owned(), message };
    let one = |args: &[Val]| -> Result<Val, TemplateError> {
        match args {
            [value] => Ok(value.clone()),
            _ => Err(err(format!("wrong number of args: want 1 got {}", args.len()))),
        }
    };
    let number = |value: Val| -> Result<f64, TemplateError> {
        match value {
            Val::Num(v) => Ok(v),
            Val::Str(s) => {
                s.trim().parse().map_err(|_| err(format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")))
            }
            Val::Bool(_) => Err(err("cannot convert a bool to a number".into())),
            Val::Tree(_) => Err(err("cannot convert a list or map to a number".into())),
            Val::Missing => Err(err("cannot convert <no value> to a number".into())),
        }
    };
    let string = |value: Val| match value {
        Val::Str(s) => s,
        Val::Num(v) => go_float(v, None),
        Val::Bool(b) => b.to_string(),
        Val::Tree(tree) => tree.go_string(),
        Val::Missing => String::new(),
    };
    // (less, equal), numbers as numbers and anything else as text. Go derives
    // the rest from these two (`gt` is `!le`), which decides NaN's answers.
    let compare = |args: &[Val]| -> Result<(bool, bool), TemplateError> {
        match args {
            [Val::Num(a), Val::Num(b)] => Ok((a < b, a == b)),
            [a, b] => {
                let (a, b) = (string(a.clone()), string(b.clone()));
                Ok((a < b, a == b))
            }
            _ => Err(err(format!("wrong number of args: want 2 got {}", args.len()))),
        }
    };
    Ok(match function {
        "humanize" => Val::Str(humanize(number(one(&args)?)?)),
        "humanize1024" => Val::Str(humanize_1024(number(one(&args)?)?)),
        "humanizePercentage" => Val::Str(format!("{}%", go_float(number(one(&args)?)? * 100.0, Some(4)))),
        "humanizeDuration" => Val::Str(humanize_duration(number(one(&args)?)?)),
        "toUpper" => Val::Str(string(one(&args)?).to_uppercase()),
        "toLower" => Val::Str(string(one(&args)?).to_lowercase()),
        "title" => Val::Str(title(&string(one(&args)?))),
        "eq" => {
            let (first, rest) = args.split_first().ok_or_else(|| err("missing arguments for comparison".into()))?;
            if rest.is_empty() {
                return Err(err("missing arguments for comparison".into()));
            }
            let mut equal = false;
            for other in rest {
                equal |= compare(&[first.clone(), other.clone()])?.1;
            }
            Val::Bool(equal)
        }
        "ne" => Val::Bool(!compare(&args)?.1),
        "lt" => Val::Bool(compare(&args)?.0),
        "le" => Val::Bool(compare(&args).map(|(less, equal)| less || equal)?),
        "gt" => Val::Bool(compare(&args).map(|(less, equal)| !(less || equal))?),
        "ge" => Val::Bool(!compare(&args)?.0),
        "not" => Val::Bool(!one(&args)?.truthy()),
        "join" => match args.as_slice() {
            [Val::Str(separator), Val::Tree(TemplateValue::List(items))] => {
                Val::Str(items.iter().map(TemplateValue::go_string).collect::<Vec<_>>().join(separator))
            }
            _ => return Err(err("want a separator and a list".into())),
        },
        "safeHtml" => Val::Str(string(one(&args)?)),
        "trimSpace" => Val::Str(string(one(&args)?).trim().to_owned()),
        "reReplaceAll" | "match" => {
            let (pattern, rest) = args.split_first().ok_or_else(|| err("missing arguments".into()))?;
            let pattern = string(pattern.clone());
            let re = regex::Regex::new(&pattern).map_err(|e| err(e.to_string()))?;
            match (function, rest) {
                ("match", [text]) => Val::Bool(re.is_match(&string(text.clone()))),
                ("reReplaceAll", [replacement, text]) => {
                    // Go's `$1` expansion is the same syntax as the regex crate's.
                    let replacement = string(replacement.clone());
                    Val::Str(re.replace_all(&string(text.clone()), replacement.as_str()).into_owned())
                }
                _ => return Err(err(format!("wrong number of args: got {}", args.len()))),
            }
        }
        "len" => match one(&args)? {
            Val::Str(s) => Val::Num(s.len() as f64),
            Val::Tree(TemplateValue::List(items)) => Val::Num(items.len() as f64),
            Val::Tree(TemplateValue::Map(map)) => Val::Num(map.len() as f64),
            other => return Err(err(format!("len of {other:?}"))),
        },
        // Go's and/or return an argument, not a bool.
        "and" => args.iter().find(|a| !a.truthy()).or(args.last()).cloned().unwrap_or(Val::Missing),
        "or" => args.iter().find(|a| a.truthy()).or(args.last()).cloned().unwrap_or(Val::Missing),
        "printf" => {
            let mut args = args.into_iter();
            let format = match args.next() {
                Some(Val::Str(format)) => format,
                _ => return Err(err("the first argument must be a format string".into())),
            };
            Val::Str(printf(&format, args.collect()))
        }
        other => return Err(TemplateError::UnknownFunction(other.to_owned())),
    })
}

fn title(text: &str) -> String {
    let mut out = String::new();
    let mut at_word_start = true;
    for c in text.chars() {
        if at_word_start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_word_start = !c.is_alphanumeric();
    }
    out
}

/// Prometheus's `humanize`: SI prefixes, four significant digits.
fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_float(v, Some(4));
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_float(v, Some(4)))
}

/// Prometheus's `humanize1024`: binary prefixes (`ki`, `Mi`, ...), four
/// significant digits; values up to 1 in magnitude are printed as they are.
fn humanize_1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_float(v, Some(4));
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_float(v, Some(4)))
}

/// Prometheus's `humanizeDuration`: seconds as `1d 2h 3m 4s`.
fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return go_float(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", go_float(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        // Go's int64() of a float beyond the range gives i64::MIN on amd64 (Rust saturates): match it.
        let duration = if v >= i64::MAX as f64 { i64::MIN } else { v as i64 };
        let (seconds, minutes, hours, days) =
            (duration % 60, (duration / 60) % 60, (duration / 3600) % 24, duration / 86400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_float(v, Some(4)))
        };
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_float(v, Some(4)))
}

/// Go's `%g` (with `precision` significant digits) or `%v` (shortest) for a float64.
pub fn go_float(v: f64, precision: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let scientific = match precision {
        None => format!("{v:e}"),
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
    };
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} always has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let negative = mantissa.starts_with('-');
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    if digits == "0" {
        return if negative { "-0".into() } else { "0".into() };
    }
    let nd = digits.len() as i32;
    let dp = exponent + 1;
    let mut eprec = precision.map_or(6, |p| p as i32);
    if precision.is_some() && eprec > nd && nd >= dp {
        eprec = nd;
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if exponent < -4 || exponent >= eprec {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exponent.abs());
    } else if dp <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-dp) as usize));
        out.push_str(&digits);
    } else if dp >= nd {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (dp - nd) as usize));
    } else {
        out.push_str(&digits[..dp as usize]);
        out.push('.');
        out.push_str(&digits[dp as usize..]);
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs rule templates use: `%s %v %d %f %e %g %q %%`,
/// with flags `-+ 0` and width and precision.
fn printf(format: &str, args: Vec<Val>) -> String {
    let mut out = String::new();
    let mut args = args.into_iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if "-+ 0#".contains(f) {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            precision = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let body = match (verb, &arg) {
            ('s' | 'v', Val::Str(s)) => match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s' | 'v', Val::Missing) => "<no value>".into(),
            ('t' | 'v', Val::Bool(b)) => b.to_string(),
            (verb, Val::Bool(b)) => format!("%!{verb}(bool={b})"),
            ('q', Val::Str(s)) => format!("{s:?}"),
            ('v', Val::Num(v)) => go_float(*v, None),
            ('g', Val::Num(v)) => go_float(*v, precision),
            ('f' | 'F', Val::Num(v)) => format!("{:.*}", precision.unwrap_or(6), v),
            ('e', Val::Num(v)) => {
                let text = format!("{:.*e}", precision.unwrap_or(6), v);
                match text.split_once('e') {
                    Some((m, e)) => {
                        let e: i32 = e.parse().unwrap_or(0);
                        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
                    }
                    None => text,
                }
            }
            ('d', Val::Num(v)) if v.fract() == 0.0 && v.is_finite() => format!("{}", *v as i64),
            ('d', Val::Num(v)) => format!("%!d(float64={})", go_float(*v, None)),
            (verb, Val::Num(v)) => format!("%!{verb}(float64={})", go_float(*v, None)),
            (verb, Val::Str(s)) => format!("%!{verb}(string={s})"),
            (verb, Val::Missing) => format!("%!{verb}(<nil>)"),
            ('s' | 'v', Val::Tree(tree)) => tree.go_string(),
            (verb, Val::Tree(tree)) => format!("%!{verb}({})", tree.go_string()),
        };
        let body =
            if flags.contains('+') && matches!(arg, Val::Num(v) if v >= 0.0) { format!("+{body}") } else { body };
        let width: usize = width.parse().unwrap_or(0);
        let pad = width.saturating_sub(body.chars().count());
        if flags.contains('-') {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if flags.contains('0') && matches!(arg, Val::Num(_)) {
            let (sign, digits) = match body.strip_prefix('-') {
                Some(rest) => ("-", rest),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    if let Some(extra) = args.next() {
        let rest: Vec<Val> = std::iter::once(extra).chain(args).collect();
        let shown: Vec<String> = rest
            .iter()
            .map(|v| match v {
                Val::Str(s) => format!("string={s}"),
                Val::Num(n) => format!("float64={}", go_float(*n, None)),
                Val::Bool(b) => format!("bool={b}"),
                Val::Tree(tree) => tree.go_string(),
                Val::Missing => "<nil>".into(),
            })
            .collect();
        let _ = write!(out, "%!(EXTRA {})", shown.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, value: f64, expected: &str) {
        let data = TemplateData {
            labels: BTreeMap::from([("instance", "web-1:9100"), ("service", "api")]),
            external_labels: BTreeMap::from([("cluster", "eu")]),
            external_url: "http://herd:7401",
            value,
        };
        let parsed = Template::parse(template).unwrap_or_else(|err| panic!("{template:?}: {err}"));
        assert_eq!(parsed.render(&data), expected, "{template:?}");
    }

    #[test]
    fn renders_like_prometheus() {
        // Expected outputs are what Prometheus 2.42 renders for the same template and value.
        for (template, value, expected) in [
            ("High error rate for {{ $labels.service }}", 0.0, "High error rate for api"),
            ("Error rate is {{ $value }}% for {{ $labels.service }}", 5.5, "Error rate is 5.5% for api"),
            ("{{ $value }}", 1e6, "1e+06"),
            ("{{ $value }}", 123456.0, "123456"),
            ("{{ $value }}", 1234567.0, "1.234567e+06"),
            ("{{ $value }}", 0.0001, "0.0001"),
            ("{{ $value }}", 0.00001, "1e-05"),
            ("{{ $value }}", 12.345678901234, "12.345678901234"),
            ("{{ $value }}", f64::NAN, "NaN"),
            ("{{ $value }}", f64::INFINITY, "+Inf"),
            ("{{ $value }}", -3.0, "-3"),
            ("{{ .Value }} {{ .Labels.instance }}", 2.0, "2 web-1:9100"),
            ("{{ $labels.missing }}!", 0.0, "!"),
            ("{{ $externalLabels.cluster }} {{ $externalURL }}", 0.0, "eu http://herd:7401"),
            ("{{ $value | humanize }}", 1234567.0, "1.235M"),
            ("{{ humanize $value }}", 0.0012, "1.2m"),
            ("{{ humanize 0 }}", 0.0, "0"),
            ("{{ $value | humanize }}", 999.0, "999"),
            ("{{ $value | humanize1024 }}", 858993459200.0, "800Gi"),
            ("{{ humanize1024 $value }}", 1536.0, "1.5ki"),
            ("{{ $value | humanize1024 }}", 1024.0, "1ki"),
            ("{{ $value | humanize1024 }}", 1023.99, "1024"),
            ("{{ $value | humanize1024 }}", -2048.0, "-2ki"),
            ("{{ $value | humanize1024 }}", 0.5, "0.5"),
            ("{{ $value | humanize1024 }}", 1e30, "8.272e+05Yi"),
            ("{{ $value | humanizePercentage }}", 0.1234567, "12.35%"),
            ("{{ $value | humanizePercentage }}", 1.0, "100%"),
            ("{{ $value | humanizeDuration }}", 90061.0, "1d 1h 1m 1s"),
            ("{{ $value | humanizeDuration }}", 3725.0, "1h 2m 5s"),
            ("{{ $value | humanizeDuration }}", 65.5, "1m 5s"),
            ("{{ $value | humanizeDuration }}", 1.5, "1.5s"),
            ("{{ $value | humanizeDuration }}", 0.0015, "1.5ms"),
            ("{{ $value | humanizeDuration }}", 0.0, "0s"),
            ("{{ printf \"%.2f\" $value }}%", 97.4567, "97.46%"),
            ("{{ $value | printf \"%.1f\" }}", 2.26, "2.3"),
            ("{{ printf \"%s is %d\" $labels.service 3 }}", 0.0, "api is 3"),
            ("{{ printf \"%5.1f|%-4s|\" $value \"ab\" }}", 2.71, "  2.7|ab  |"),
            ("{{ printf \"%g\" $value }}", 0.5, "0.5"),
            ("{{ printf \"%.3g\" $value }}", 1234.0, "1.23e+03"),
            ("{{ $labels.service | toUpper }} {{ title \"high load\" }}", 0.0, "API High Load"),
            ("a {{- $labels.service -}} b", 0.0, "aapib"),
            ("a {{/* note */}}b", 0.0, "a b"),
            (
                "{{ humanize $labels.service }}",
                0.0,
                "<error expanding template: humanize: strconv.ParseFloat: parsing \"api\": invalid syntax>",
            ),
            ("{{ if gt $value 80.0 }}high{{ else }}ok{{ end }}", 90.0, "high"),
            ("{{ if gt $value 80.0 }}high{{ else }}ok{{ end }}", 10.0, "ok"),
            ("{{ if gt $value 90.0 }}crit{{ else if gt $value 80.0 }}warn{{ else }}ok{{ end }}", 85.0, "warn"),
            ("{{ if eq $labels.service \"api\" \"web\" }}front{{ end }}", 0.0, "front"),
            ("{{ if $labels.missing }}x{{ else }}no label{{ end }}", 0.0, "no label"),
            ("{{ if and 1 0 }}x{{ end }}|{{ not 0 }}|{{ lt 1 2 }}", 0.0, "|true|true"),
            ("{{- if ne $labels.instance \"\" -}} on {{ $labels.instance }}{{- end }}", 0.0, "on web-1:9100"),
        ] {
            check(template, value, expected);
        }
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        for template in [
            "{{ if gt $value 1.0 }}x",
            "{{ else }}",
            "{{ if 1 }}{{ else }}{{ else }}{{ end }}",
            "{{ range $labels }}{{ end }}",
            "{{ $x := 1 }}",
            "{{ query \"up\" }}",
            "{{ $labels.a.b }}",
            "{{ $value",
            "{{ printf \"%s }}",
        ] {
            assert!(Template::parse(template).is_err(), "{template:?} parsed");
        }
    }

    fn notification_data(status: &str) -> TemplateValue {
        let alert = |name: &str, status: &str, description: &str| {
            TemplateValue::Map(BTreeMap::from([
                ("Status".to_owned(), TemplateValue::Str(status.to_owned())),
                ("Labels".to_owned(), TemplateValue::string_map([("alertname", "DiskFull"), ("instance", name)])),
                ("Annotations".to_owned(), TemplateValue::string_map([("description", description)])),
            ]))
        };
        TemplateValue::Map(BTreeMap::from([
            ("Status".to_owned(), TemplateValue::Str(status.to_owned())),
            ("GroupLabels".to_owned(), TemplateValue::string_map([("alertname", "DiskFull")])),
            ("CommonLabels".to_owned(), TemplateValue::string_map([("alertname", "DiskFull"), ("team", "ops")])),
            ("ExternalURL".to_owned(), TemplateValue::Str("http://herd:7401".to_owned())),
            (
                "Alerts".to_owned(),
                TemplateValue::List(vec![
                    alert("a:1", "firing", "a is full. "),
                    alert("b:1", "resolved", "b is fine. "),
                ]),
            ),
        ]))
    }

    #[test]
    fn notification_templates_as_alertmanager_renders_them() {
        let data = notification_data("firing");
        let render = |text: &str| Template::parse_notification(text).unwrap().render_value(&data).unwrap();
        assert_eq!(render("[Alert] {{ .GroupLabels.alertname }}"), "[Alert] DiskFull");
        assert_eq!(render("{{ range .Alerts }}{{ .Annotations.description }}{{ end }}"), "a is full. b is fine. ");
        assert_eq!(render(r#"{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}"#), "danger");
        let resolved = notification_data("resolved");
        let color =
            Template::parse_notification(r#"{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}"#).unwrap();
        assert_eq!(color.render_value(&resolved).unwrap(), "good");
        assert_eq!(render("{{ .CommonLabels.team | toUpper }} {{ .ExternalURL }}"), "OPS http://herd:7401");
        assert_eq!(
            render("{{ len .Alerts.Firing }} firing, {{ len .Alerts.Resolved }} resolved"),
            "1 firing, 1 resolved"
        );
        assert_eq!(render("{{ range .Alerts.Firing }}{{ .Labels.instance }} {{ end }}"), "a:1 ");
        assert_eq!(render("{{ range .Alerts.Missing }}x{{ else }}none{{ end }}"), "none");
        assert_eq!(render("{{ .GroupLabels }}"), "map[alertname:DiskFull]");
        assert_eq!(render("{{ .NoSuchField }}"), "");
        assert_eq!(render(r#"{{ .CommonLabels.SortedPairs.Values | join " " }}"#), "DiskFull ops");
        assert_eq!(render(r#"{{ join "," .CommonLabels.Names }}"#), "alertname,team");
        assert_eq!(
            render(r#"{{ range .CommonLabels.SortedPairs }}{{ .Name }}={{ .Value }};{{ end }}"#),
            "alertname=DiskFull;team=ops;"
        );
        assert_eq!(
            render(r#"{{ reReplaceAll "(.*):1" "$1" "a:1" }} {{ match "^D" .GroupLabels.alertname }}"#),
            "a true"
        );
        assert_eq!(render(r#"{{ trimSpace " x " | safeHtml }}"#), "x");
        assert!(Template::parse(r#"{{ join "," $labels }}"#).is_err(), "Alertmanager's functions stay out of rules");
        assert!(Template::parse_notification("{{ range .Alerts }}").is_err());
        assert!(Template::parse_notification("{{ range $i, $a := .Alerts }}{{ end }}").is_err());
        // The rule dialect stays strict.
        assert!(Template::parse("{{ .GroupLabels.alertname }}").is_err());
        assert!(Template::parse("{{ range .Alerts }}{{ end }}").is_err());
    }
}
