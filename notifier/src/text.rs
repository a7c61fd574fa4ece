//! Making untrusted strings safe to show: in a mail subject, a message attribute, a body.
//!
//! Every string in a payload comes from a client or a server we do not control. SNS
//! refuses control characters in subjects (and XML-invalid ones anywhere), and a newline
//! or a bidirectional override in a user name could forge or disguise a line of the
//! mail. Such characters are shown as visible escapes (`\u{a}`) instead.

/// Characters that are never shown as themselves: C0/C1 controls (newlines too),
/// Unicode line/paragraph separators, bidirectional controls, zero-width and other
/// invisible format characters, and the noncharacters XML refuses.
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
            | '\u{FFFE}' | '\u{FFFF}')
}

/// `s` with every hostile character replaced by its escape, e.g. `\u{1b}`.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hostile(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` cut to at most `max_chars` characters, ending in `…` when it was cut.
pub fn clip(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max_chars - 1).collect();
    out.push('…');
    out
}

/// `s` cut to at most `max_bytes` bytes at a character boundary, with a note when cut.
pub fn clip_bytes(s: &str, max_bytes: usize) -> String {
    const NOTE: &str = "\n… (cut: too long)";
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes.saturating_sub(NOTE.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{NOTE}", &s[..end])
}

/// `clean` then `clip`: the one-step form for a value shown to a person.
pub fn show(s: &str, max_chars: usize) -> String {
    clip(&clean(s), max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(clean("alice Ünïcödé 漢字 🙂"), "alice Ünïcödé 漢字 🙂");
    }

    #[test]
    fn controls_and_invisible_characters_are_escaped() {
        assert_eq!(clean("a\nb\r\tc\0"), "a\\u{a}b\\u{d}\\u{9}c\\u{0}");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(clean("evil\u{202E}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(
            clean("zero\u{200B}width\u{FEFF}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(clean("line\u{2028}sep\u{85}"), "line\\u{2028}sep\\u{85}");
    }

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("short", 5), "short");
        assert_eq!(clip("toolong", 5), "tool…");
        assert_eq!(clip("ééééé", 4), "ééé…");
        assert_eq!(clip("🙂🙂🙂", 2).chars().count(), 2);
        assert_eq!(clip("abc", 0), "");
    }

    #[test]
    fn clip_bytes_keeps_characters_whole() {
        assert_eq!(clip_bytes("short", 100), "short");
        let cut = clip_bytes(&"é".repeat(100), 50);
        assert!(cut.len() <= 50 && cut.ends_with("(cut: too long)"), "{cut}");
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn show_escapes_before_clipping() {
        assert_eq!(show("a\nbcdef", 6), "a\\u{a…");
    }
}
