//! Reading and rewriting the `$config['_url']` map of erangel's
//! `config.php`, as pure functions on its text.
//!
//! The map may be written as `array(...)`, as `[...]`, or as one
//! `$config['_url']['svc'] = '...';` statement per service, in any mix,
//! with either quote style, comments, trailing commas and any spacing. The
//! live map is what PHP would compute: a whole-array assignment replaces
//! the map, a per-service assignment sets one entry, the last one wins.
//!
//! A patch changes only the bytes between the quotes of the values it must
//! change, in their original quote style; every other byte stays as it was.
//! A service the file does not route yet gets a new entry written like its
//! neighbours.

use std::collections::BTreeMap;
use std::ops::Range;

use super::RouteError;
use super::php::{Quote, Tok, Token, line_of, tokens};

/// Longest URL accepted into the file.
const MAX_URL: usize = 2048;

/// One `'service' => 'url'` pair, wherever it is written.
#[derive(Debug, Clone)]
struct Entry {
    service: String,
    value: String,
    /// The key token, quotes included.
    key: Range<usize>,
    key_quote: Quote,
    /// The value token, quotes included.
    value_span: Range<usize>,
    /// Between the value's quotes: the only bytes a change rewrites.
    inner: Range<usize>,
    quote: Quote,
    /// Array entries: the end of the comma that follows, if one does.
    comma_end: Option<usize>,
}

/// What to do to one service's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String),
    /// Drop the service from the map: what "route to OCP" means for a
    /// service the branch itself does not route.
    Remove,
}

#[derive(Debug, Clone)]
enum Statement {
    /// `$config['_url'] = array(...);` or `= [...];`
    Whole {
        entries: Vec<Entry>,
        /// Offset just after `(` or `[`.
        open: usize,
        /// End of the comma after the last entry, if there is one.
        trailing_comma: Option<usize>,
    },
    /// `$config['_url']['svc'] = '...';`, `stmt` from `$config` to `;`.
    Single { entry: Entry, stmt: Range<usize> },
}

/// The `_url` assignments of one `config.php`, located in its text.
#[derive(Debug, Clone)]
pub struct RouteMap<'a> {
    text: &'a str,
    statements: Vec<Statement>,
}

/// Service → URL as PHP would see it.
pub fn read(text: &str) -> Result<BTreeMap<String, String>, RouteError> {
    Ok(RouteMap::parse(text)?.routes())
}

/// `text` with each service of `changes` routed to its URL.
pub fn patch(text: &str, changes: &BTreeMap<String, String>) -> Result<String, RouteError> {
    RouteMap::parse(text)?.patch(changes)
}

/// `text` with `changes` applied: removals first, then the new URLs.
pub fn apply(text: &str, changes: &BTreeMap<String, Change>) -> Result<String, RouteError> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for (service, change) in changes {
        match change {
            Change::Set(url) => {
                set.insert(service.clone(), url.clone());
            }
            Change::Remove => remove.push(service.as_str()),
        }
    }
    let map = RouteMap::parse(text)?;
    for (service, url) in &set {
        check_url(service, url)?;
    }
    let removed = map.remove(&remove);
    if removed == text {
        return map.patch(&set);
    }
    RouteMap::parse(&removed)?.patch(&set)
}

/// Checks a URL before it is written into PHP source.
pub fn check_url(service: &str, url: &str) -> Result<(), RouteError> {
    let why = if url.len() > MAX_URL {
        Some("it is longer than 2048 bytes")
    } else if url.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(RouteError::InvalidUrl {
            service: service.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

impl<'a> RouteMap<'a> {
    pub fn parse(text: &'a str) -> Result<Self, RouteError> {
        let toks = tokens(text)?;
        let mut statements = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            match url_map_at(&toks, i) {
                Some(after) => {
                    let (statement, next) = Parser { text, toks: &toks }.statement(i, after)?;
                    statements.extend(statement);
                    i = next;
                }
                None => i += 1,
            }
        }
        if statements.is_empty() {
            return Err(RouteError::NoMap);
        }
        Ok(RouteMap { text, statements })
    }

    fn effective(&self) -> BTreeMap<&str, &Entry> {
        let mut map = BTreeMap::new();
        for statement in &self.statements {
            match statement {
                Statement::Whole { entries, .. } => {
                    map.clear();
                    for e in entries {
                        map.insert(e.service.as_str(), e);
                    }
                }
                Statement::Single { entry, .. } => {
                    map.insert(entry.service.as_str(), entry);
                }
            }
        }
        map
    }

    pub fn routes(&self) -> BTreeMap<String, String> {
        self.effective()
            .into_iter()
            .map(|(k, e)| (k.to_owned(), e.value.clone()))
            .collect()
    }

    pub fn patch(&self, changes: &BTreeMap<String, String>) -> Result<String, RouteError> {
        for (service, url) in changes {
            check_url(service, url)?;
        }
        let current = self.effective();
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        let mut added: Vec<(&str, &str)> = Vec::new();
        for (service, url) in changes {
            match current.get(service.as_str()) {
                Some(e) if e.value == *url => {}
                Some(e) => edits.push((e.inner.clone(), encode(url, e.quote))),
                None => added.push((service, url)),
            }
        }
        if !added.is_empty() {
            edits.extend(self.insertions(&added));
        }
        edits.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut at = 0;
        for (range, with) in edits {
            out.push_str(&self.text[at..range.start]);
            out.push_str(&with);
            at = range.end;
        }
        out.push_str(&self.text[at..]);
        Ok(out)
    }

    /// `text` without any statement or entry that gives `services` their
    /// live value, each taken out with its line when it has one to itself.
    fn remove(&self, services: &[&str]) -> String {
        let text = self.text;
        let removed = |e: &Entry| services.contains(&e.service.as_str());
        let last_whole = self
            .statements
            .iter()
            .rposition(|s| matches!(s, Statement::Whole { .. }));
        // With no array and every line removed, no map would be left at
        // all: the last line becomes an empty array instead.
        let last_single_goes = last_whole.is_none()
            && self.statements.iter().all(|s| match s {
                Statement::Single { entry, .. } => removed(entry),
                Statement::Whole { .. } => false,
            });
        let mut cuts: Vec<(Range<usize>, &str)> = Vec::new();
        let from = last_whole.unwrap_or(0);
        let count = self.statements.len();
        for (n, statement) in self.statements.iter().enumerate().skip(from) {
            match statement {
                Statement::Single { entry, stmt } if removed(entry) => {
                    if last_single_goes && n + 1 == count {
                        cuts.push((stmt.clone(), "$config['_url'] = array();"));
                    } else {
                        cuts.push((whole_lines(text, stmt.clone()), ""));
                    }
                }
                Statement::Single { .. } => {}
                Statement::Whole { entries, .. } => {
                    for (i, e) in entries.iter().enumerate().filter(|(_, e)| removed(e)) {
                        match e.comma_end {
                            Some(end) => cuts.push((whole_lines(text, e.key.start..end), "")),
                            None => {
                                // The last entry, without a comma of its own:
                                // the comma before it goes with it.
                                let kept = entries[..i].iter().rev().find(|k| !removed(k));
                                let start = kept.map_or(e.key.start, |k| k.value_span.end);
                                cuts.push((start..e.value_span.end, ""));
                            }
                        }
                    }
                }
            }
        }
        cuts.sort_by_key(|(r, _)| r.start);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (cut, with) in cuts {
            if cut.start > at {
                out.push_str(&text[at..cut.start]);
            }
            out.push_str(with);
            at = at.max(cut.end);
        }
        out.push_str(&text[at..]);
        out
    }

    /// New entries, after the statement that decides the map last, written
    /// the way its own entries are.
    fn insertions(&self, added: &[(&str, &str)]) -> Vec<(Range<usize>, String)> {
        let text = self.text;
        let Some(last) = self.statements.last() else {
            return Vec::new();
        };
        match last {
            Statement::Single { entry, stmt } => {
                let indent = indent_of(text, stmt.start);
                let mut block = String::new();
                for (service, url) in added {
                    block.push_str(&indent);
                    block.push_str(&text[stmt.start..entry.key.start]);
                    block.push_str(&quoted(service, entry.key_quote));
                    block.push_str(&text[entry.key.end..entry.value_span.start]);
                    block.push_str(&quoted(url, entry.quote));
                    block.push_str(&text[entry.value_span.end..stmt.end]);
                    block.push('\n');
                }
                vec![after_line(text, stmt.end, block)]
            }
            Statement::Whole {
                entries,
                open,
                trailing_comma,
            } => {
                let Some(e) = entries.last() else {
                    let list: Vec<String> = added
                        .iter()
                        .map(|(s, u)| {
                            format!(
                                "{} => {}",
                                quoted(s, Quote::Single),
                                quoted(u, Quote::Single)
                            )
                        })
                        .collect();
                    return vec![(*open..*open, list.join(", "))];
                };
                let pair = |service: &str, url: &str| {
                    format!(
                        "{}{}{}",
                        quoted(service, e.key_quote),
                        &text[e.key.end..e.value_span.start],
                        quoted(url, e.quote)
                    )
                };
                let own_line = text[line_start(text, e.key.start)..e.key.start]
                    .bytes()
                    .all(|b| b == b' ' || b == b'\t');
                if own_line {
                    let indent = indent_of(text, e.key.start);
                    let mut block = String::new();
                    for (service, url) in added {
                        block.push_str(&indent);
                        block.push_str(&pair(service, url));
                        block.push_str(",\n");
                    }
                    let mut edits = Vec::new();
                    let end = match trailing_comma {
                        Some(end) => *end,
                        None => {
                            edits.push((e.value_span.end..e.value_span.end, ",".to_owned()));
                            e.value_span.end
                        }
                    };
                    if trailing_comma.is_none() {
                        // The file had no trailing comma: keep it that way.
                        block.truncate(block.len() - 2);
                        block.push('\n');
                    }
                    edits.push(after_line(text, end, block));
                    edits
                } else {
                    let list: Vec<String> = added.iter().map(|(s, u)| pair(s, u)).collect();
                    match trailing_comma {
                        Some(end) => vec![(*end..*end, format!(" {},", list.join(", ")))],
                        None => vec![(
                            e.value_span.end..e.value_span.end,
                            format!(", {}", list.join(", ")),
                        )],
                    }
                }
            }
        }
    }
}

/// Where new lines go after offset `end`: at the start of the next line
/// when the rest of this one is blank or a line comment (so the comment
/// stays with its code), else right after `end` on a line of their own.
fn after_line(text: &str, end: usize, block: String) -> (Range<usize>, String) {
    let rest_end = text[end..].find('\n').map_or(text.len(), |p| end + p);
    let rest = text[end..rest_end].trim();
    let quiet = rest.is_empty()
        || ((rest.starts_with("//") || rest.starts_with('#')) && !rest.contains("?>"));
    if quiet && rest_end < text.len() {
        (rest_end + 1..rest_end + 1, block)
    } else {
        let block = block.trim_end_matches('\n');
        (end..end, format!("\n{block}"))
    }
}

/// `range` widened to its whole lines when nothing else is on them but
/// blanks and a trailing line comment.
fn whole_lines(text: &str, range: Range<usize>) -> Range<usize> {
    let start = line_start(text, range.start);
    let before_blank = text[start..range.start]
        .bytes()
        .all(|b| b == b' ' || b == b'\t');
    let rest_end = text[range.end..]
        .find('\n')
        .map_or(text.len(), |p| range.end + p);
    let rest = text[range.end..rest_end].trim();
    let after_quiet = rest.is_empty()
        || ((rest.starts_with("//") || rest.starts_with('#')) && !rest.contains("?>"));
    if before_blank && after_quiet && rest_end < text.len() {
        start..rest_end + 1
    } else {
        range
    }
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |p| p + 1)
}

/// The blanks that begin the line `at` is on.
fn indent_of(text: &str, at: usize) -> String {
    text[line_start(text, at)..at]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// `value` as the inside of a PHP string literal in `quote`.
fn encode(value: &str, quote: Quote) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match (quote, c) {
            (_, '\\') => out.push_str("\\\\"),
            (Quote::Single, '\'') => out.push_str("\\'"),
            (Quote::Double, '"') => out.push_str("\\\""),
            (Quote::Double, '$') => out.push_str("\\$"),
            _ => out.push(c),
        }
    }
    out
}

fn quoted(value: &str, quote: Quote) -> String {
    format!("{q}{}{q}", encode(value, quote), q = quote.char())
}

/// If tokens at `i` read `$config['_url']`, the index after them.
fn url_map_at(toks: &[Token], i: usize) -> Option<usize> {
    let [var, open, key, close] = toks.get(i..i + 4)? else {
        return None;
    };
    let is = matches!(&var.tok, Tok::Var(v) if v == "config")
        && open.tok == Tok::Punct('[')
        && matches!(&key.tok, Tok::Str { value: Ok(k), .. } if k == "_url")
        && close.tok == Tok::Punct(']');
    is.then_some(i + 4)
}

struct Parser<'t> {
    text: &'t str,
    toks: &'t [Token],
}

impl Parser<'_> {
    fn error(&self, at: usize, what: impl Into<String>) -> RouteError {
        let offset = self
            .toks
            .get(at)
            .or(self.toks.last())
            .map_or(0, |t| t.span.start);
        RouteError::Syntax {
            line: line_of(self.text, offset),
            what: what.into(),
        }
    }

    fn is(&self, at: usize, tok: &Tok) -> bool {
        self.toks.get(at).is_some_and(|t| &t.tok == tok)
    }

    /// A statement starting with `$config['_url']` at `start`, `at` just
    /// after it. Reads of the map (`$x = $config['_url'];`) are no
    /// statement of ours.
    fn statement(&self, start: usize, at: usize) -> Result<(Option<Statement>, usize), RouteError> {
        if self.is(at, &Tok::Punct('=')) {
            return self.whole(at + 1).map(|(s, next)| (Some(s), next));
        }
        if !self.is(at, &Tok::Punct('[')) {
            return Ok((None, at));
        }
        // `$config['_url'][KEY]`: an assignment only when `=` follows.
        let close = at + 2;
        if !self.is(close, &Tok::Punct(']')) || !self.is(close + 1, &Tok::Punct('=')) {
            return Ok((None, at));
        }
        let key = self.key(at + 1)?;
        let (entry, after) = self.value(key, close + 2)?;
        if !self.is(after, &Tok::Punct(';')) {
            return Err(self.error(
                after,
                format!("expected ';' after the URL of '{}'", entry.service),
            ));
        }
        let stmt = self.toks[start].span.start..self.toks[after].span.end;
        Ok((Some(Statement::Single { entry, stmt }), after + 1))
    }

    fn whole(&self, at: usize) -> Result<(Statement, usize), RouteError> {
        let (open, closer) = match self.toks.get(at).map(|t| &t.tok) {
            Some(Tok::Ident(id)) if id.eq_ignore_ascii_case("array") => {
                if !self.is(at + 1, &Tok::Punct('(')) {
                    return Err(self.error(at + 1, "expected '(' after array"));
                }
                (at + 1, ')')
            }
            Some(Tok::Punct('[')) => (at, ']'),
            _ => {
                return Err(self.error(
                    at,
                    "$config['_url'] is set to something other than an array(...) or [...] literal",
                ));
            }
        };
        let mut entries = Vec::new();
        let mut trailing_comma = None;
        let mut i = open + 1;
        loop {
            if self.is(i, &Tok::Punct(closer)) {
                break;
            }
            if i >= self.toks.len() {
                return Err(self.error(open, "the $config['_url'] array is never closed"));
            }
            let key = self.key(i)?;
            if !self.is(i + 1, &Tok::Arrow) {
                return Err(self.error(i + 1, format!("expected '=>' after '{}'", key.0)));
            }
            let (mut entry, after) = self.value(key, i + 2)?;
            trailing_comma = None;
            if self.is(after, &Tok::Punct(',')) {
                trailing_comma = Some(self.toks[after].span.end);
                entry.comma_end = trailing_comma;
                entries.push(entry);
                i = after + 1;
            } else if self.is(after, &Tok::Punct(closer)) {
                entries.push(entry);
                i = after;
            } else {
                return Err(self.error(
                    after,
                    format!(
                        "the URL of '{}' is not a plain quoted string",
                        entry.service
                    ),
                ));
            }
        }
        if !self.is(i + 1, &Tok::Punct(';')) {
            return Err(self.error(i + 1, "expected ';' after the $config['_url'] array"));
        }
        let statement = Statement::Whole {
            entries,
            open: self.toks[open].span.end,
            trailing_comma,
        };
        Ok((statement, i + 2))
    }

    /// A quoted service name at `at`.
    fn key(&self, at: usize) -> Result<(String, Range<usize>, Quote), RouteError> {
        match self.toks.get(at) {
            Some(Token {
                tok:
                    Tok::Str {
                        quote,
                        value: Ok(v),
                        ..
                    },
                span,
            }) => Ok((v.clone(), span.clone(), *quote)),
            _ => Err(self.error(
                at,
                "a service name in $config['_url'] is not a quoted string",
            )),
        }
    }

    /// The quoted URL at `at` for `key`, and the index after it.
    fn value(
        &self,
        (service, key, key_quote): (String, Range<usize>, Quote),
        at: usize,
    ) -> Result<(Entry, usize), RouteError> {
        match self.toks.get(at) {
            Some(Token {
                tok:
                    Tok::Str {
                        quote,
                        inner,
                        value,
                    },
                span,
            }) => match value {
                Ok(value) => Ok((
                    Entry {
                        service,
                        value: value.clone(),
                        key,
                        key_quote,
                        value_span: span.clone(),
                        inner: inner.clone(),
                        quote: *quote,
                        comma_end: None,
                    },
                    at + 1,
                )),
                Err(why) => Err(self.error(
                    at,
                    format!("the URL of '{service}' is not a plain quoted string: {why}"),
                )),
            },
            _ => Err(self.error(
                at,
                format!("the URL of '{service}' is not a plain quoted string"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
