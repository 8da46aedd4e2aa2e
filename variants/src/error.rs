use thiserror::Error;

/// Why a variant could not be built for a case. Raised before any tensor work, so a
/// sweep can reject a bad configuration up front.
#[derive(Debug, Error)]
pub enum VariantError {
    #[error("unknown variant `{0}` (see `xarena list`)")]
    Unknown(String),
    #[error("variant `{variant}`: invalid parameters: {message}")]
    Params { variant: String, message: String },
    #[error("variant `{variant}`: {message}")]
    Config { variant: String, message: String },
    #[error("variant `{variant}` does not support causal masking")]
    NoCausal { variant: String },
    #[error("variant `{variant}` cannot run at scope `{scope}` (it runs at: {supported})")]
    Scope {
        variant: String,
        scope: String,
        supported: String,
    },
}

impl VariantError {
    /// Checks that a size parameter is at least 1.
    pub fn positive(variant: &str, field: &str, value: i64) -> Result<(), Self> {
        if value < 1 {
            return Err(Self::config(
                variant,
                format!("{field} must be at least 1, got {value}"),
            ));
        }
        Ok(())
    }

    pub fn config(variant: &str, message: impl Into<String>) -> Self {
        VariantError::Config {
            variant: variant.to_string(),
            message: message.into(),
        }
    }
}
