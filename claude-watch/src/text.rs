//! Text that observed processes control (command names, paths, unit and container names,
//! headers) made safe to print for people: control characters are shown escaped, so a
//! process cannot repaint an operator's terminal (ESC sequences) or forge lines (newlines).

use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) escaped as `\u{..}` (`\n`, `\t` ...).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
}
