//! Where in a TOML file an error is: serde's spans cover a whole table, so the line is narrowed to
//! the key or value the message is about. Shared by the scenario files and the mesh file, so
//! both name `file:line` the same way.

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line, within `span`, of the first occurrence of `needle`, else the span's first line. A
/// step is deserialized as a whole, so serde's span covers the table; this narrows it to the
/// key or value the message is about.
pub fn locate(text: &str, span: std::ops::Range<usize>, needle: Option<&str>) -> usize {
    let start = span.start.min(text.len());
    // For an array-of-tables entry the span may cover only its `[[header]]`: search on to the
    // next header.
    let next = text[start..]
        .char_indices()
        .skip(1)
        .find(|(i, _)| text[start + i..].starts_with("\n[["))
        .map(|(i, _)| start + i);
    let end = next.unwrap_or(text.len()).max(span.end.min(text.len()));
    needle
        .filter(|n| !n.is_empty())
        .and_then(|n| text[start..end].find(n))
        .map_or_else(|| line_of(text, start), |i| line_of(text, start + i))
}

/// What a serde message is about: the first `quoted` or "quoted" token.
pub fn subject(message: &str) -> Option<String> {
    for (open, close) in [('`', '`'), ('"', '"')] {
        if let Some(a) = message.find(open)
            && let Some(b) = message[a + 1..].find(close)
        {
            let token = &message[a + 1..a + 1 + b];
            // A key (`form`) is found as `form =`, a value (`yes` of "unknown variant") quoted.
            let value = open == '"' || message.starts_with("unknown variant");
            return Some(if value { format!("\"{token}\"") } else { format!("{token} =") });
        }
    }
    None
}
