//! Where in a TOML text a problem is: the line, the column, and the key.
//!
//! Every file tandem reads — release catalogs, image manifests, agent
//! configs — reports errors as `FILE:LINE[:COLUMN]: KEY: what is wrong`, so
//! an operator goes straight to the line. `toml` gives byte spans; these
//! turn them into what people read.

/// 1-based line and column of a byte offset in `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key a TOML error at `offset` is about: the key on its line, or the
/// table header when the error points at one; `whole` for an empty line
/// (an error about the document as a whole).
pub fn key_on_line(text: &str, offset: usize, whole: &str) -> String {
    let offset = floor_char_boundary(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    match line.split_once('=') {
        Some((key, _)) if !line.starts_with('[') => key.trim().to_string(),
        _ if line.is_empty() => whole.to_string(),
        _ => line.to_string(),
    }
}

/// `offset` clamped into `text` and moved back to a character boundary, so
/// slicing never panics on a span that points inside a multi-byte character.
fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_columns_and_keys() {
        let text = "a = 1\n[table]\nkey = \"é\"\n\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 14), (3, 1));
        assert_eq!(position(text, 20), (3, 7));
        assert_eq!(position(text, 21), (3, 8), "inside é: clamped back");
        assert_eq!(position(text, 999), (5, 1));
        assert_eq!(key_on_line(text, 16, "doc"), "key");
        assert_eq!(key_on_line(text, 7, "doc"), "[table]");
        assert_eq!(key_on_line(text, text.len(), "doc"), "doc");
    }
}
