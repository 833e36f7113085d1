//! Configuration errors, each with the file and (where known) line and column.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one pass over the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one source file, turning byte spans into line and column.
pub(crate) struct Reporter<'a> {
    file: &'a Path,
    src: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a Path, src: &'a str, errors: &'a mut Vec<ConfigError>) -> Self {
        Self { file, src, errors }
    }

    /// Report a problem at a byte span of the source.
    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = Some(line_col(self.src, span.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            at,
            message: message.into(),
        });
    }

    /// Report a problem with no particular place (a missing file, say).
    pub(crate) fn whole(&mut self, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            at: None,
            message: message.into(),
        });
    }

    /// Report a TOML syntax or schema error.
    pub(crate) fn toml(&mut self, e: &toml::de::Error) {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => self.at(span, message),
            None => self.whole(message),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn errors_print_as_file_line_col() {
        let e = ConfigError {
            file: PathBuf::from("policies/acme.toml"),
            at: Some((3, 7)),
            message: "unknown field `hostz`".into(),
        };
        assert_eq!(
            e.to_string(),
            "policies/acme.toml:3:7: unknown field `hostz`"
        );
    }
}
