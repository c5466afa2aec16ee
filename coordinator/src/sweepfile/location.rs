//! Byte offsets in a sweep file turned into what a user can find: line, column and the
//! dotted name of the field written there.

use std::fmt;
use std::ops::Range;

/// A place in a sweep file, 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The text of one sweep file and its name, for locating spans in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceText<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> SourceText<'a> {
    /// Line and column (1-based) of a byte offset; offsets past the end point after the last character.
    pub fn locate(&self, offset: usize) -> Location {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        Location { file: self.file.to_string(), line, column }
    }

    pub fn locate_span(&self, span: &Range<usize>) -> Location {
        self.locate(span.start)
    }

    /// Best-effort dotted name of the field at `offset`: the enclosing `[table]` header
    /// and the `key =` written on that line (e.g. `regimes.finetune.lr`).
    pub fn field_at(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        let line = strip_comment(&self.text[line_start..line_end]).trim();
        if line.starts_with('[') {
            return header_name(line);
        }
        let key = line.split_once('=').map(|(key, _)| key.trim().trim_matches('"').to_string());
        let header = self.text[..line_start]
            .lines()
            .rev()
            .map(|l| strip_comment(l).trim())
            .find(|l| l.starts_with('['))
            .and_then(header_name);
        match (header, key) {
            (Some(h), Some(k)) if !k.is_empty() => Some(format!("{h}.{k}")),
            (None, Some(k)) if !k.is_empty() => Some(k),
            (h, _) => h,
        }
    }
}

fn header_name(line: &str) -> Option<String> {
    let name = line.trim_start_matches('[').split(']').next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn strip_comment(line: &str) -> &str {
    // Good enough for locating a key: a '#' inside a quoted string is rare in sweep files.
    match line.find('#') {
        Some(i) => &line[..i],
        None => line,
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = SourceText { file: "f.toml", text: "a = 1\n[b]\nc = \"x\"\n" };
        assert_eq!(src.locate(0).to_string(), "f.toml:1:1");
        assert_eq!(src.locate(10).to_string(), "f.toml:3:1");
        assert_eq!(src.locate(14).to_string(), "f.toml:3:5");
        assert_eq!(src.field_at(14).as_deref(), Some("b.c"));
        assert_eq!(src.field_at(2).as_deref(), Some("a"));
        assert_eq!(src.field_at(7).as_deref(), Some("b"));
    }
}
