//! The configuration as the shell reads it: the file (the core's [`claude_watch_core::config`]
//! parses and checks its text, re-exported here).

use std::path::Path;

pub use claude_watch_core::config::*;

/// The configuration a command uses, and where it came from: the file at `path` (which must
/// exist), else the one at [`DEFAULT_PATH`] when it exists, else the built-in one (named
/// `<built-in>`).
///
/// # Errors
/// When the chosen file cannot be read or is invalid.
pub fn find(path: Option<&Path>) -> Result<(Config, String), ConfigError> {
    match path {
        Some(p) => Ok((load(p)?, p.display().to_string())),
        None if Path::new(DEFAULT_PATH).exists() => {
            Ok((load(Path::new(DEFAULT_PATH))?, DEFAULT_PATH.to_owned()))
        }
        None => Ok((Config::builtin(), "<built-in>".to_owned())),
    }
}

/// Reads and checks the file at `path`.
///
/// # Errors
/// When the file cannot be read or is invalid.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::parse(&text, &path.display().to_string())
}
