//! Route overrides: the `$config['_url']` map of the gateway's
//! `config.php`, read and patched as text ([`patcher`], pure), the per-branch
//! snapshot of its OCP defaults ([`defaults`]), and the checked, atomic
//! rewrite of the live file ([`file`]).

pub mod defaults;
pub mod file;
pub mod lint;
pub mod patcher;
mod php;

/// Why a `config.php` cannot be read or patched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("config.php line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("config.php has no $config['_url'] map")]
    NoMap,
    #[error("config.php line {line}: the file is not UTF-8 text")]
    NotUtf8 { line: usize },
    #[error("invalid URL for service '{service}': {why}")]
    InvalidUrl { service: String, why: &'static str },
}

/// `bytes` as text, or the line of the first byte that is not UTF-8.
pub fn text(bytes: &[u8]) -> Result<&str, RouteError> {
    std::str::from_utf8(bytes).map_err(|e| RouteError::NotUtf8 {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })
}
