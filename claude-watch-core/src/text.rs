//! Text that observed processes control (command names, paths, unit and container names,
//! headers, request ids, models) made safe to print for people: control characters and the
//! invisible formatting characters that reorder or hide text are shown escaped, so a process
//! cannot repaint an operator's terminal (ESC sequences), forge lines (newlines), or make a
//! line read otherwise than it is (bidirectional overrides such as U+202E, zero-width
//! characters).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself: a control character (C0, DEL, C1), a
/// line or paragraph separator, or an invisible formatting character (bidirectional marks,
/// embeddings, overrides and isolates, zero-width spaces and joiners, word joiner and
/// invisible operators, the byte-order mark).
#[must_use]
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `s` with every unsafe character ([`is_unsafe`]) escaped as `\u{..}` (`\n`, `\t` ...).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` made safe for a terminal line by line: its line breaks kept, everything else unsafe
/// escaped as by [`printable`] (a report of many lines).
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let lines: Vec<Cow<'_, str>> = s.split('\n').map(printable).collect();
    Cow::Owned(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(printable("pid:42 claude ✓"), Cow::Borrowed(_)));
        assert_eq!(printable("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(
            printable("x.service\nINFO forged line"),
            "x.service\\nINFO forged line"
        );
        assert_eq!(printable("\u{9b}31m\u{7f}"), "\\u{9b}31m\\u{7f}");
    }

    #[test]
    fn invisible_reordering_characters_are_escaped() {
        // `agent.service` shown as `agent.ecivres` by a right-to-left override, a name padded
        // with zero-width spaces to look like another, an isolate, a line separator.
        assert_eq!(printable("agent.\u{202E}ecivres"), "agent.\\u{202e}ecivres");
        assert_eq!(printable("nginx\u{200B}.service"), "nginx\\u{200b}.service");
        assert_eq!(printable("a\u{2066}b\u{2069}"), "a\\u{2066}b\\u{2069}");
        assert_eq!(printable("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(printable("\u{FEFF}x"), "\\u{feff}x");
        // Right-to-left text itself is not hidden: only the invisible controls are.
        assert!(matches!(printable("שלום"), Cow::Borrowed(_)));
        assert!(matches!(printable("claude-opus-4-1 ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_report_keeps_its_lines_and_loses_the_rest() {
        assert!(matches!(printable_lines("a\nb\n"), Cow::Borrowed(_)));
        assert_eq!(
            printable_lines("instance x\u{202E}y\nmodel \x1b[31mred\n"),
            "instance x\\u{202e}y\nmodel \\u{1b}[31mred\n"
        );
    }
}
