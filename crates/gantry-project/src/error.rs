use std::fmt;
use std::path::PathBuf;

use crate::spans::{KeyPath, LineCol};

/// One problem in a project file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The project file.
    pub file: PathBuf,
    /// Where in it.
    pub at: LineCol,
    /// The key at fault, when there is one.
    pub key: Option<KeyPath>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.file.display(),
            self.at.line,
            self.at.column
        )?;
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Errors of loading a project.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The project file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems; all of them are listed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    /// A lock file that cannot be used.
    #[error("{}: {reason}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A target name on the command line that the project does not define.
    #[error("{file}: no target named {name:?} (targets: {known})", file = .file.display())]
    UnknownTarget {
        /// The project file.
        file: PathBuf,
        /// The name given.
        name: String,
        /// The names defined.
        known: String,
    },
}
