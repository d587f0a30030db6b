//! Diagnostics: what kitt tells a user about their manifest.
//!
//! One type for every user-facing manifest error, rendered in one place with the file, line and
//! column, the offending line with a caret under the token, and a hint on how to fix it. Errors
//! are a product: tests pin their text (tests/broken/ states each expected position and message).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One error in one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The file the error is in; `None` for a manifest that has no file (built in memory).
    pub file: Option<PathBuf>,
    pub pos: Pos,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic { file: None, pos, message: message.into(), help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn in_file(mut self, file: &Path) -> Diagnostic {
        if self.file.is_none() {
            self.file = Some(file.to_path_buf());
        }
        self
    }

    /// `file:line:col: message`, the one-line form (used by `--output json` consumers and logs).
    pub fn headline(&self) -> String {
        match &self.file {
            Some(f) => format!("{}:{}: {}", f.display(), self.pos, self.message),
            None => format!("{}: {}", self.pos, self.message),
        }
    }

    /// The full compiler-style rendering, showing the source line when `source` is given.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = format!("error: {}\n", self.message);
        let location = match &self.file {
            Some(f) => format!("{}:{}", f.display(), self.pos),
            None => format!("<suite>:{}", self.pos),
        };
        let line_text = source.and_then(|s| s.lines().nth(self.pos.line.saturating_sub(1)));
        let gutter = self.pos.line.to_string().len();
        let _ = writeln!(out, "{:gutter$}--> {location}", "");
        if let Some(text) = line_text {
            let text = text.replace('\t', " ");
            let col = self.pos.col.saturating_sub(1);
            let width = token_width(&text, col);
            let _ = writeln!(out, "{:gutter$} |", "");
            let _ = writeln!(out, "{} | {}", self.pos.line, text);
            let _ = writeln!(out, "{:gutter$} | {:col$}{}", "", "", "^".repeat(width));
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{:gutter$} = help: {help}", "");
        }
        out
    }
}

/// Width of the token starting at `col` (characters), at least 1.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col).collect();
    let quoted = matches!(rest.first(), Some('"') | Some('\''));
    let width = if quoted {
        let q = rest[0];
        rest.iter().skip(1).position(|c| *c == q).map_or(rest.len(), |p| p + 2)
    } else {
        rest.iter().position(|c| c.is_whitespace() || matches!(c, ':' | ',' | ']' | '}' | '#')).unwrap_or(rest.len())
    };
    width.max(1)
}

/// "did you mean `x`?" for the closest of `candidates`, when one is close enough.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A list of known names for a help line: "expected one of `a`, `b`, `c`".
pub fn one_of<'a>(candidates: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
    format!("expected one of {}", names.join(", "))
}

/// Help for an unknown name: a suggestion when one is close, else the list of valid names.
pub fn unknown_help<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    suggest(word, candidates.clone()).unwrap_or_else(|| one_of(candidates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let d = Diagnostic::new(Pos { line: 2, col: 5 }, "unknown key `concurency`")
            .help("did you mean `concurrency`?")
            .in_file(Path::new("s.yaml"));
        let r = d.render(Some("a:\n    concurency: 4\n"));
        assert_eq!(
            r,
            "error: unknown key `concurency`\n --> s.yaml:2:5\n  |\n2 |     concurency: 4\n  |     ^^^^^^^^^^\n  = help: did you mean `concurrency`?\n"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("concurency", ["concurrency", "requests"]).as_deref(), Some("did you mean `concurrency`?"));
        assert_eq!(suggest("zzz", ["concurrency"]), None);
    }
}
