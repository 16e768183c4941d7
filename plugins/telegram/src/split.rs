//! Splitting long texts for `sendMessage` (at most 4096 characters each).

/// Splits `text` into parts of at most `max` characters, preferring a line
/// break, then a space, before cutting inside a word.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        // Byte index just past `max` characters.
        let limit = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let window = &rest[..limit];
        let cut = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        let (head, tail) = rest.split_at(cut);
        parts.push(head.to_string());
        // Drop the separator we split on.
        rest = tail
            .strip_prefix('\n')
            .or_else(|| tail.strip_prefix(' '))
            .unwrap_or(tail);
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_at_lines_then_words_then_anywhere() {
        assert_eq!(split("short", 10), vec!["short"]);
        assert_eq!(split("aaaa\nbbbb cccc", 10), vec!["aaaa", "bbbb cccc"]);
        assert_eq!(split("aaaa bbbb cccc", 10), vec!["aaaa bbbb", "cccc"]);
        assert_eq!(split("abcdefghijklmno", 10), vec!["abcdefghij", "klmno"]);
        let long = "ä".repeat(25);
        let parts = split(&long, 10);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(parts.concat(), long);
    }
}
