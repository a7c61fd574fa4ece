//! Why an invocation fails. Returned to Lambda as a function error, so that Lambda's
//! retries and the on-failure destination apply; never a panic.

use lambda_runtime::Diagnostic;

use crate::event::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid payload: {0}")]
    InvalidPayload(#[from] ParseError),
    #[error("SNS publish failed: {0}")]
    Publish(String),
}

impl From<NotifierError> for Diagnostic {
    fn from(error: NotifierError) -> Diagnostic {
        let error_type = match error {
            NotifierError::InvalidPayload(_) => "InvalidPayload",
            NotifierError::Publish(_) => "PublishFailed",
        };
        Diagnostic {
            error_type: error_type.to_string(),
            error_message: error.to_string(),
        }
    }
}
