//! Just enough of a PHP lexer to find `$config['_url']` reliably: it knows
//! where comments, strings, heredocs and inline HTML begin and end, so a
//! `_url` inside any of them is never mistaken for code. Everything it does
//! not need to understand is an opaque [`Tok::Other`].

use std::ops::Range;

use super::RouteError;

/// Quote character of a string literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    Single,
    Double,
}

impl Quote {
    pub fn char(self) -> char {
        match self {
            Quote::Single => '\'',
            Quote::Double => '"',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// `$name`
    Var(String),
    Ident(String),
    /// A quoted string; `value` is its decoded content, or why it is not a
    /// constant (variable interpolation, an escape we do not decode).
    Str {
        quote: Quote,
        /// The bytes between the quotes.
        inner: Range<usize>,
        value: Result<String, &'static str>,
    },
    Punct(char),
    /// `=>`
    Arrow,
    Other,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    /// Byte range in the source.
    pub span: Range<usize>,
}

/// 1-based line number of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn syntax(text: &str, at: usize, what: impl Into<String>) -> RouteError {
    RouteError::Syntax {
        line: line_of(text, at),
        what: what.into(),
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The tokens of the PHP code in `text` (inline HTML is skipped).
pub fn tokens(text: &str) -> Result<Vec<Token>, RouteError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = match open_tag(b, 0) {
        Some(after) => after,
        None => return Ok(out),
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'?' if b.get(i + 1) == Some(&b'>') => {
                // Back to inline HTML until the next opening tag.
                match open_tag(b, i + 2) {
                    Some(after) => i = after,
                    None => break,
                }
            }
            b'#' => i = line_comment_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = line_comment_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find(b, i + 2, b"*/")
                    .map(|p| p + 2)
                    .ok_or_else(|| syntax(text, start, "a /* comment is never closed"))?;
            }
            b'\'' => {
                let (end, value) = single_quoted(text, i)?;
                out.push(Token {
                    tok: Tok::Str {
                        quote: Quote::Single,
                        inner: i + 1..end - 1,
                        value: Ok(value),
                    },
                    span: start..end,
                });
                i = end;
            }
            b'"' => {
                let (end, value) = double_quoted(text, i, b'"')?;
                out.push(Token {
                    tok: Tok::Str {
                        quote: Quote::Double,
                        inner: i + 1..end - 1,
                        value,
                    },
                    span: start..end,
                });
                i = end;
            }
            b'`' => {
                let (end, _) = double_quoted(text, i, b'`')?;
                out.push(Token {
                    tok: Tok::Other,
                    span: start..end,
                });
                i = end;
            }
            b'<' if b[i..].starts_with(b"<<<") => {
                i = heredoc_end(text, i)?;
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
            b'$' if b
                .get(i + 1)
                .is_some_and(|&n| is_ident(n) && !n.is_ascii_digit()) =>
            {
                i += 1;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Var(text[start + 1..i].to_owned()),
                    span: start..i,
                });
            }
            _ if is_ident(c) => {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(text[start..i].to_owned()),
                    span: start..i,
                });
            }
            b'=' if b.get(i + 1) == Some(&b'>') => {
                i += 2;
                out.push(Token {
                    tok: Tok::Arrow,
                    span: start..i,
                });
            }
            b'=' if b.get(i + 1) == Some(&b'=') => {
                // `==` and `===` are comparisons, never an assignment.
                while b.get(i) == Some(&b'=') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
            b'[' | b']' | b'(' | b')' | b',' | b';' | b'=' => {
                i += 1;
                out.push(Token {
                    tok: Tok::Punct(c as char),
                    span: start..i,
                });
            }
            _ => {
                // One whole character, so spans stay on char boundaries.
                i += text[i..].chars().next().map_or(1, char::len_utf8);
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
        }
    }
    Ok(out)
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Where PHP code starts after `from`: past `<?php`, `<?=` or `<?`.
fn open_tag(b: &[u8], from: usize) -> Option<usize> {
    let at = find(b, from, b"<?")?;
    let rest = &b[at + 2..];
    if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"php") {
        Some(at + 5)
    } else if rest.first() == Some(&b'=') {
        Some(at + 3)
    } else {
        Some(at + 2)
    }
}

/// A `//` or `#` comment ends at the line's end or at `?>`, which it leaves
/// for the lexer.
fn line_comment_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i] == b'\n' {
            return i + 1;
        }
        if b[i] == b'?' && b.get(i + 1) == Some(&b'>') {
            return i;
        }
        i += 1;
    }
    i
}

/// Returns the offset after the closing quote and the decoded value.
fn single_quoted(text: &str, start: usize) -> Result<(usize, String), RouteError> {
    let b = text.as_bytes();
    let mut value = String::new();
    let mut i = start + 1;
    let mut run = i;
    while i < b.len() {
        match b[i] {
            b'\\' if matches!(b.get(i + 1), Some(b'\\' | b'\'')) => {
                value.push_str(&text[run..i]);
                value.push(b[i + 1] as char);
                i += 2;
                run = i;
            }
            b'\'' => {
                value.push_str(&text[run..i]);
                return Ok((i + 1, value));
            }
            _ => i += 1,
        }
    }
    Err(syntax(text, start, "a '...' string is never closed"))
}

/// A `"` (or backtick) string: the offset after the closing quote, and the
/// decoded value unless it interpolates or uses an escape we do not decode.
fn double_quoted(
    text: &str,
    start: usize,
    quote: u8,
) -> Result<(usize, Result<String, &'static str>), RouteError> {
    let b = text.as_bytes();
    let mut value: Result<String, &'static str> = Ok(String::new());
    let mut i = start + 1;
    let mut run = i;
    let push = |value: &mut Result<String, &'static str>, s: &str| {
        if let Ok(v) = value {
            v.push_str(s);
        }
    };
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() => {
                push(&mut value, &text[run..i]);
                let decoded = match b[i + 1] {
                    b'n' => Some("\n"),
                    b't' => Some("\t"),
                    b'r' => Some("\r"),
                    b'v' => Some("\x0b"),
                    b'e' => Some("\x1b"),
                    b'f' => Some("\x0c"),
                    b'\\' => Some("\\"),
                    b'$' => Some("$"),
                    b'"' => Some("\""),
                    b'`' if quote == b'`' => Some("`"),
                    b'0'..=b'7' | b'x' | b'u' => {
                        value = Err("it uses an octal, hex or unicode escape");
                        None
                    }
                    _ => None,
                };
                match decoded {
                    Some(s) => {
                        push(&mut value, s);
                        i += 2;
                    }
                    // An unknown escape is kept as written, backslash and all.
                    None => i += 1,
                }
                run = i;
            }
            b'$' if b
                .get(i + 1)
                .is_some_and(|&n| n == b'{' || (is_ident(n) && !n.is_ascii_digit())) =>
            {
                value = Err("it interpolates a variable");
                i += 1;
            }
            b'{' if b.get(i + 1) == Some(&b'$') => {
                value = Err("it interpolates a variable");
                i += 1;
            }
            c if c == quote => {
                push(&mut value, &text[run..i]);
                return Ok((i + 1, value));
            }
            _ => i += 1,
        }
    }
    Err(syntax(text, start, "a \"...\" string is never closed"))
}

/// The offset after a heredoc or nowdoc's closing identifier.
fn heredoc_end(text: &str, start: usize) -> Result<usize, RouteError> {
    let b = text.as_bytes();
    let mut i = start + 3;
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    let quoted = matches!(b.get(i), Some(b'\'' | b'"'));
    if quoted {
        i += 1;
    }
    let id_start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    let id = &b[id_start..i];
    if id.is_empty() {
        return Err(syntax(text, start, "a <<< heredoc has no identifier"));
    }
    if quoted {
        i += 1;
    }
    // The closing identifier is the first thing on a later line (indented
    // since PHP 7.3), not followed by another identifier character.
    let mut line = match find(b, i, b"\n") {
        Some(p) => p + 1,
        None => return Err(syntax(text, start, "a <<< heredoc is never closed")),
    };
    while line < b.len() {
        let mut j = line;
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if b[j..].starts_with(id) && !b.get(j + id.len()).is_some_and(|&c| is_ident(c)) {
            return Ok(j + id.len());
        }
        line = match find(b, line, b"\n") {
            Some(p) => p + 1,
            None => break,
        };
    }
    Err(syntax(text, start, "a <<< heredoc is never closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        tokens(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn comments_strings_and_html_hide_code() {
        let src = "before $config <?php // $config['_url']\n# $x\n/* $y */ 'a\\'b' \"c\\$d\" ?> $z <?php $w;";
        let toks = kinds(src);
        assert_eq!(toks.len(), 4, "{toks:?}");
        assert!(matches!(&toks[0], Tok::Str { value: Ok(v), .. } if v == "a'b"));
        assert!(matches!(&toks[1], Tok::Str { value: Ok(v), .. } if v == "c$d"));
        assert_eq!(toks[2], Tok::Var("w".into()));
        assert_eq!(toks[3], Tok::Punct(';'));
    }

    #[test]
    fn interpolation_is_not_a_constant() {
        let toks = kinds("<?php \"http://$host/x\" \"a{$b}\" \"plain $ 1\"");
        assert!(matches!(&toks[0], Tok::Str { value: Err(_), .. }));
        assert!(matches!(&toks[1], Tok::Str { value: Err(_), .. }));
        assert!(matches!(&toks[2], Tok::Str { value: Ok(v), .. } if v == "plain $ 1"));
    }

    #[test]
    fn heredocs_are_skipped() {
        let src = "<?php $a = <<<EOT\n$config['_url'] = 1;\n  EOT;\n$b;";
        let toks = kinds(src);
        assert_eq!(toks[3], Tok::Punct(';'));
        assert_eq!(toks[4], Tok::Var("b".into()));
    }

    #[test]
    fn unclosed_things_name_their_line() {
        for src in [
            "<?php\n\n'abc",
            "<?php\n\n/* x",
            "<?php\n\n\"x",
            "<?php\n\n<<<A\nx",
        ] {
            match tokens(src) {
                Err(RouteError::Syntax { line, .. }) => assert_eq!(line, 3, "{src:?}"),
                other => panic!("{src:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn line_numbers_count_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }
}
