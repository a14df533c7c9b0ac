//! Text from users (run and sweep names, descriptions, references, notes,
//! error messages that quote them) made safe to show: control characters
//! (C0, DEL, C1: ANSI and OSC escape sequences, carriage returns, newlines)
//! are written escaped (`\x1b`, `\r`, `\n`), so a name cannot split a table
//! row, move the cursor or recolour a terminal. Everything else, including
//! non-ASCII text, is kept. `--format json` needs none of this (JSON escapes
//! control characters itself).

use std::borrow::Cow;
use std::fmt::Write;

fn is_control(c: char) -> bool {
    c.is_control()
}

/// `text` with every control character escaped.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_control(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` with control characters escaped except line breaks and tabs: for
/// multi-line text shown as lines (a configuration, a list of errors).
pub fn printable_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_control(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(text);
    }
    let lines: Vec<Cow<str>> = text
        .split('\n')
        .map(|l| {
            let parts: Vec<Cow<str>> = l.split('\t').map(printable).collect();
            Cow::Owned(parts.join("\t"))
        })
        .collect();
    Cow::Owned(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert!(matches!(printable("lr=0.1 ★ ünï"), Cow::Borrowed(_)));
        assert_eq!(printable("a\x1b[31mred\x1b[0m"), "a\\x1b[31mred\\x1b[0m");
        assert_eq!(printable("two\nlines\r"), "two\\nlines\\r");
        assert_eq!(printable("osc\x1b]0;title\x07"), "osc\\x1b]0;title\\x07");
        assert_eq!(printable("c1\u{9b}31m del\x7f"), "c1\\x9b31m del\\x7f");
        assert_eq!(printable_lines("a\nb\x1b"), "a\nb\\x1b");
    }
}
